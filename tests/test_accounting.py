"""accounting.py: the table of `python accounting.py PRESET` (parameters by component against published counts, on
the meta device), its command line, and the batch arithmetic of `train.py --dry_run=True`, which prints the same
table for the model a config would train.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import accounting
import checkpoint
import optim
import train
from configurator import UserError
from conftest import REPO_ROOT, CharData, run_main, run_script, tiny_gpt
from model import GPT, resolve_config

# GPT-2 small by hand (Radford et al. 2019; HF's GPT2Model): vocabulary 50257, context 1024, 768 wide, 12 layers,
# biases everywhere, the head tied to the token embedding
GPT2_PARTS = {"token embedding": 50257 * 768, "position embedding": 1024 * 768,
              "attention": 12 * (768 * 3 * 768 + 3 * 768 + 768 * 768 + 768),  # c_attn, c_proj
              "MLP": 12 * (768 * 4 * 768 + 4 * 768 + 4 * 768 * 768 + 768),  # c_fc, c_proj
              "norms": (2 * 12 + 1) * 2 * 768}  # ln_1, ln_2 per layer and ln_f: weight and bias
FLOPS_N = "N in the FLOPs' 6N (the head's matmul included)"  # get_num_params's row: the FLOPs per token's N


def table_counts(out: str) -> dict[str, int]:
    """The 'label   1,234' lines of the accounting table."""
    rows = [line.rsplit(None, 1) for line in out.splitlines() if line[-1:].isdigit() and "," in line.split()[-1]]
    return {label.strip(): int(n.replace(",", "")) for label, n in rows if n.replace(",", "").isdigit()}


def test_accounting_table_counts_gpt2_by_component():
    counts = table_counts(accounting.main(["gpt2"]))
    assert {k: counts[k] for k in GPT2_PARTS} == GPT2_PARTS
    assert counts["total"] == sum(GPT2_PARTS.values()) == 124_439_808  # HF's count of OpenAI's gpt2
    assert counts["non-embedding"] == counts["total"] - GPT2_PARTS["token embedding"] - GPT2_PARTS["position embedding"]
    # the N of the FLOPs' 6N keeps the tied token embedding: it does the head's matmul
    assert counts[FLOPS_N] == counts["total"] - GPT2_PARTS["position embedding"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["gpt1"], ["116,534,784"]),  # HF's openai-gpt
    # "Build a Large Language Model (From Scratch)", ch. 4: its GPTModel without weight tying, no qkv bias
    (["gpt2", "--qkv_bias=False", "--tie_embeddings=False"], ["163,009,536", "621.83 MB in float32"]),
])
def test_accounting_table_published_counts(argv: list[str], expected: list[str]):
    out = accounting.main(argv)
    assert all(line in out for line in expected), out
    for label in ("token embedding", "position embedding", "attention", "MLP", "norms", "head", "total",
                  "training FLOPs per token", "fp32 (or bf16 AMP)"):
        assert label in out


def test_accounting_table_of_gpt3_175b_costs_no_memory():
    total = table_counts(accounting.main(["gpt3-175b"]))["total"]
    assert abs(total / 175e9 - 1) < 0.003  # Brown et al.: 175.0B


@pytest.mark.slow
def test_accounting_command_line():
    rc, out, err = run_script("accounting.py", ["gpt3-small", "--attn_pattern=alternating", "--window_size=256"])
    assert rc == 0, err
    assert f"{124_439_808 + 1024 * 768:,}" in out  # GPT-2 small with 2048 learned positions
    assert "attn_pattern='alternating'" in out
    cases = ((["gpt5"], "unknown preset 'gpt5' (did you mean"), ([], "name a preset"),
             (["gpt2", "--window_size=0", "--attn_pattern=alternating"], "window_size must be in"),
             ([str(REPO_ROOT / "config" / "train_gpt2.py")],
              f"account it with python train.py {REPO_ROOT / 'config' / 'train_gpt2.py'} --dry_run=True"))
    for argv, message in cases:
        rc, _, err = run_main("accounting.py", argv)
        assert rc == 2, (argv, err)
        assert "Traceback" not in err, err
        assert message in err.strip().splitlines()[-1], err


def meta_count(preset: str, **settings: object) -> int:
    with torch.device("meta"):
        return GPT(resolve_config(preset, **settings)).get_num_params(non_embedding=False)


def test_dry_run_needs_no_memory_and_accounts_before_naming_missing_data(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]):
    out_dir = tmp_path / "out"
    with pytest.raises(UserError, match=r"openwebtext/meta\.json not found: prepare the data first"):
        train.main(["--preset=gpt3-175b", "--dry_run=True", "--device=cpu", f"--data_root={tmp_path}",
                    "--batch_size=1", "--gradient_accumulation_steps=8", f"--out_dir={out_dir}"])
    printed = capsys.readouterr().out
    assert f"{meta_count('gpt3-175b', vocab_size=50304):,}" in printed  # GPT-2's vocab, padded
    assert "tokens per iteration: 16,384 = batch_size 1 x block_size 2048 x gradient_accumulation_steps 8" in printed
    assert "dry run: nothing trained" in printed
    assert not out_dir.exists()


def test_dry_run_of_a_config_file_counts_the_model_train_saves(char_data: CharData, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]):
    configs = [str(REPO_ROOT / "config" / "train_shakespeare_char.py"), str(REPO_ROOT / "config" / "arch" / "llama.py")]
    flags = [f"--data_root={char_data.root}", f"--dataset={char_data.name}", "--device=cpu"]  # 62 chars -> 64
    train.main([*configs, *flags, "--dry_run=True"])
    counted = table_counts(capsys.readouterr().out)["total"]
    out_dir = tmp_path / "out"  # one real iteration of the same config: the checkpoint holds what was trained
    train.main([*configs, *flags, f"--out_dir={out_dir}", "--compile=False", "--dtype=float32", "--batch_size=1",
                "--max_iters=1", "--eval_iters=1", "--eval_interval=1", "--always_save_checkpoint=True"])
    saved = checkpoint.read(str(out_dir)).model
    assert counted == sum(t.numel() for t in saved.values())  # untied: every tensor is its own parameter
    assert saved["transformer.wte.weight"].shape[0] == 64


def test_a_runs_table_shows_only_the_memory_of_how_it_trains():
    model = tiny_gpt()
    assert "bf16 (pure" in accounting.table(model)  # python accounting.py: both ways
    run = accounting.table(model, torch.float32)  # train.py on a CPU: float32 throughout
    assert "bf16" not in run and "fp32, float32 compute" in run
    assert "fp32, bfloat16 compute" in accounting.table(model, torch.bfloat16)  # AMP: float32 weights and states


@pytest.mark.parametrize("tie", [True, False])
def test_non_embedding_leaves_out_both_embeddings_and_keeps_an_untied_head(tie: bool):
    # a tiny BPE model, as a user reported it: there the FLOPs' N (tied head included) outgrows the embedding
    with torch.device("meta"):
        model = GPT(resolve_config("gpt2", n_layer=2, n_head=2, n_embd=64, vocab_size=50304, tie_embeddings=tie))
    t = model.transformer
    embeddings = {id(t.wte.weight), id(t.wpe.weight)}
    expected = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)  # an untied head is its own
    assert accounting.non_embedding_params(model) == expected
    counts = table_counts(accounting.table(model))
    label = "non-embedding" if tie else "non-embedding (the untied head kept)"
    assert counts[label] == expected
    assert counts[FLOPS_N] == model.get_num_params()
    if tie:
        assert counts[label] < counts["token embedding"] < counts[FLOPS_N]


def muon_rule_elements(model: GPT) -> int:
    """optim.py's documented rule, from names and shapes: a block's 2-D weight matrix keeps one momentum buffer
    (Muon), every other parameter AdamW's two moments."""
    named = dict(model.named_parameters())  # a tied weight once
    return sum((1 if p.dim() == 2 and n.startswith("transformer.h.") else 2) * p.numel() for n, p in named.items())


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_optimizer_state_is_what_the_optimizer_allocates(name: str, tie: bool):
    model = tiny_gpt(tie_embeddings=tie).train()
    optimizer = optim.build(model, name, 1e-3, 0.1, (0.9, 0.95), "cpu")
    idx = torch.randint(0, 64, (2, 8))
    model(idx, idx)[1].backward()
    optimizer.step()  # the state now exists: count its tensors, the step counters left out as accounting does
    allocated = sum(v.numel() for state in optimizer.state.values() for k, v in state.items() if k != "step")
    assert accounting.optimizer_state_elements(model, name) == allocated
    by_rule = muon_rule_elements(model) if name == "muon" else 2 * sum(p.numel() for p in model.parameters())
    assert allocated == by_rule


def memory_row(out: str, label: str) -> list[str]:
    """The cells of one training-memory row (GiB, or the header's names): weights, grads, optimizer state, total."""
    (line,) = [line for line in out.splitlines() if line.startswith(label)]
    return line.removeprefix(label).split()


def test_a_muon_runs_table_counts_muons_state():
    with torch.device("meta"):
        model = GPT(resolve_config("gpt2"))
    total = model.get_num_params(non_embedding=False)
    states = muon_rule_elements(model)
    out = accounting.table(model, optimizer="muon")
    assert memory_row(out, "training memory (GiB)") == ["weights", "grads", "Muon+AdamW", "total"]
    for label, size in (("fp32 (or bf16 AMP)", 4), ("bf16 (pure, bf16 states)", 2)):
        gib = [total * size / 2**30, total * size / 2**30, states * size / 2**30]
        assert memory_row(out, label) == [f"{x:,.2f}" for x in (*gib, sum(gib))]
    adamw = accounting.table(model)
    assert memory_row(adamw, "training memory (GiB)") == ["weights", "grads", "AdamW", "total"]
    assert memory_row(adamw, "fp32 (or bf16 AMP)")[2] == f"{2 * total * 4 / 2**30:,.2f}"  # two moments, float32
    with pytest.raises(ValueError, match=r"^optimizer must be one of adamw, muon, got 'sgd'$"):
        accounting.table(model, optimizer="sgd")
