"""A nanoGPT user's files just work: a data folder nanoGPT's shakespeare_char prepare wrote (train.bin, val.bin,
meta.pkl, no meta.json) trains; a checkpoint nanoGPT's train.py wrote (model_args, config, the compiled model's
_orig_mod. keys, no meta) samples, exports and resumes, its tokenizer taken from data/<dataset>/meta.pkl as
nanoGPT's sample.py takes it (read by safeload: a planted call in meta.pkl never runs), else GPT-2's BPE. The
files are written here in nanoGPT's formats, field for field."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import export
import optim
import sample
import train
from configurator import UserError
from conftest import TINY_MODEL, ready_to_decode, run_main, shakespeare_text, tiny_flags, tiny_gpt
from model import GPT, GPTConfig
from test_safeload import Planted

NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")  # its model_args


def nanogpt_data(folder: Path) -> str:
    """data/shakespeare_char as nanoGPT's prepare.py leaves it: uint16 ids and meta.pkl. Returns the chars."""
    text = shakespeare_text()
    chars = sorted(set(text))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, dict(enumerate(chars))
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    folder.mkdir(parents=True)
    n = int(0.9 * len(ids))
    ids[:n].tofile(folder / "train.bin")
    ids[n:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return "".join(chars)


def nanogpt_checkpoint(out_dir: Path, vocab_size: int, dataset: str) -> GPT:
    """out_dir/ckpt.pt as nanoGPT's train.py saves it from a compiled model; the model it holds."""
    model = tiny_gpt(seed=5, vocab_size=vocab_size)
    args = {k: v for k, v in {**TINY_MODEL, "vocab_size": vocab_size}.items() if k in NANOGPT_ARGS}
    optimizer = optim.adamw(model, 0.1, 1e-3, (0.9, 0.99), "cpu")  # nanoGPT's two groups, its order
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    optimizer.step()
    out_dir.mkdir(parents=True)
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "model_args": args, "iter_num": 250, "best_val_loss": 2.5,
                "config": {"dataset": dataset, "out_dir": str(out_dir), "batch_size": 64}}, out_dir / "ckpt.pt")
    return model


@pytest.fixture
def nanogpt_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, GPT]:
    """A nanoGPT working directory, the current one: data/shakespeare_char and out-shakespeare-char/ckpt.pt."""
    monkeypatch.chdir(tmp_path)
    chars = nanogpt_data(tmp_path / "data" / "shakespeare_char")
    model = nanogpt_checkpoint(tmp_path / "out-shakespeare-char", len(chars), "shakespeare_char")
    return tmp_path, chars, model


def test_a_nanogpt_checkpoint_reads_with_its_meta_pkl_and_samples(nanogpt_dir: tuple[Path, str, GPT]):
    _, chars, model = nanogpt_dir
    ckpt = checkpoint.read("out-shakespeare-char")
    assert ckpt.header.meta["chars"] == chars and ckpt.header.iter_num == 250
    loaded = ready_to_decode("out-shakespeare-char")[0]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    rc, out, err = run_main(sample, ["--out_dir=out-shakespeare-char", "--device=cpu", "--num_samples=1",
                                     "--max_new_tokens=20", "--start=First Citizen:", "--seed=1"])
    assert rc == 0, err
    assert "First Citizen:" in out and set(out) <= set(chars) | {"-"}
    assert "nanoGPT checkpoint" in err and "meta.pkl" in err


def test_a_nanogpt_checkpoint_exports_and_resumes(nanogpt_dir: tuple[Path, str, GPT]):
    root, _, _ = nanogpt_dir
    export.main(["--out_dir=out-shakespeare-char", f"--hf_dir={root / 'hf'}"])
    assert (root / "hf" / "model.safetensors").is_file()
    history = train.main(["--out_dir=out-shakespeare-char", "--init_from=resume", "--dataset=shakespeare_char",
                          "--device=cpu", "--dtype=float32", "--compile=False", "--max_iters=252", "--batch_size=4",
                          "--eval_interval=1000", "--eval_iters=1", "--log_interval=1", "--learning_rate=1e-3",
                          "--decay_lr=False", "--wandb_log=False"])
    assert [it for it, _ in history["train_loss"]] == [251, 252]
    assert checkpoint.read("out-shakespeare-char").header.iter_num == 252  # now one of ours


def test_a_nanogpt_data_folder_trains_from_scratch(nanogpt_dir: tuple[Path, str, GPT]):
    root, chars, _ = nanogpt_dir
    data = type("Data", (), {"root": root / "data", "name": "shakespeare_char"})
    history = train.main(tiny_flags(data, root / "out", max_iters=2))
    assert len(history["train_loss"]) == 2
    assert checkpoint.read(str(root / "out")).header.meta["chars"] == chars


def test_without_a_meta_pkl_a_nanogpt_checkpoint_is_gpt2_bpe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    nanogpt_checkpoint(tmp_path / "out", 50304, "openwebtext")
    header = checkpoint.read("out").header
    assert header.meta["tokenizer"] == "gpt2" and header.model_config() == GPTConfig(**{
        **{k: v for k, v in TINY_MODEL.items() if k in NANOGPT_ARGS}, "vocab_size": 50304})


def test_a_char_checkpoint_run_where_its_meta_pkl_is_not_is_one_line(nanogpt_dir: tuple[Path, str, GPT],
                                                                      monkeypatch: pytest.MonkeyPatch):
    # python sample.py --out_dir=../nanoGPT/out-shakespeare-char from our folder: GPT-2's BPE would be assumed for
    # a 62-token model; its meta.pkl is looked for relative to where it runs, as nanoGPT's sample.py looks
    root, chars, _ = nanogpt_dir
    elsewhere = root / "ours"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_main("sample.py", [f"--out_dir={root / 'out-shakespeare-char'}", "--device=cpu",
                                            "--max_new_tokens=2"])
    assert (code, out) == (2, "") and err.count("\n") == 1 and "Traceback" not in err
    assert err == (f"error: {root / 'out-shakespeare-char' / 'ckpt.pt'} is a nanoGPT checkpoint of {len(chars)} token "
                   "ids, too few for GPT-2's BPE: its tokenizer, data/shakespeare_char/meta.pkl relative to this "
                   "folder (where nanoGPT's sample.py looks), is not here: run from the folder that holds it, or "
                   "copy it there\n")


def test_a_planted_call_in_meta_pkl_is_refused_and_never_run(nanogpt_dir: tuple[Path, str, GPT]):
    root, _, _ = nanogpt_dir
    with open(root / "data" / "shakespeare_char" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 3, "itos": Planted(root / "ran")}, f)
    with pytest.raises(UserError, match=r"^refusing data/shakespeare_char/meta\.pkl: it names posix\.mkdir"):
        checkpoint.read("out-shakespeare-char")
    shutil.rmtree(root / "out-shakespeare-char")
    rc, _, err = run_main("train.py", ["--dataset=shakespeare_char", "--device=cpu", "--out_dir=o", "--max_iters=1"])
    assert rc == 2 and err.count("\n") == 1 and "refusing" in err and "posix.mkdir" in err
    assert not (root / "ran").exists() and not os.path.exists("o")


def test_a_nanogpt_optimizer_state_that_does_not_fit_is_one_line(nanogpt_dir: tuple[Path, str, GPT]):
    ckpt = torch.load("out-shakespeare-char/ckpt.pt", weights_only=True)
    ckpt["optimizer"]["param_groups"] = ckpt["optimizer"]["param_groups"][:1]  # one group, where ours has two
    torch.save(ckpt, "out-shakespeare-char/ckpt.pt")
    rc, _, err = run_main("train.py", ["--out_dir=out-shakespeare-char", "--init_from=resume", "--device=cpu",
                                       "--dataset=shakespeare_char", "--compile=False", "--max_iters=252"])
    assert rc == 2 and err.splitlines()[-1].startswith("error: the optimizer state in ") and err.splitlines()[
        -1].endswith("does not fit this run's optimizer (loaded state dict has a different number of parameter "
                      "groups): its weights still sample and export, but cannot be resumed here"), err
