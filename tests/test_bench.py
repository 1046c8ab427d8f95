"""bench.py on CPU with a tiny model: train and sample rows, table, JSON, real data, and refused settings."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import bench
import generate
import train
from configurator import UserError
from datafiles import write_meta
from dataloader import Batches
from model import GPT, GPTConfig

SHAPE = ["--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32"]  # the vocabulary left open
TINY = [*SHAPE, "--vocab_size=64", "--compile=off", "--warmup=1", "--iters=2"]
SAMPLE = ["--mode=sample", "--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64",
          "--compile=off", "--prompt_tokens=4", "--warmup=4"]


def timed(argv: list[str]) -> tuple[list[dict], float]:
    """bench.main's rows and the wall-clock seconds the whole call took: an outer bound on every timed part."""
    t0 = time.perf_counter()
    rows = bench.main(argv)
    return rows, time.perf_counter() - t0


def test_train_rows_on_random_tokens_fill_the_table_and_the_json(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    rows, seconds = timed([*TINY, "--batch_size=2,4", f"--json={out}"])
    assert [(r["compile"], r["batch_size"], r["status"]) for r in rows] == [("off", 2, "ok"), ("off", 4, "ok")]
    for r in rows:  # 2 timed steps of batch x 32 tokens each, within the call's own time
        assert 0 < 2 * r["ms_per_iter"] / 1000 < seconds
        assert r["tokens_per_s"] > 2 * r["batch_size"] * 32 / seconds
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # no known peak, no CUDA memory stats on CPU
        assert r["device"] == "cpu" and r["dtype"] == "float32" and r["data"] == "synthetic"
        assert np.isfinite(r["loss"]) and r["loss"] > 0
    assert json.loads(out.read_text()) == rows
    printed = capsys.readouterr().out
    assert "| compile | batch | ms/iter | tokens/s | MFU | peak mem (GiB) | warm-up (s) | loss |" in printed
    assert "cpu, torch " in printed and "GPT 2 layers, 2 heads, 32 wide, block 32, vocab 64" in printed
    assert "`python bench.py --device=cpu" in printed
    # the count is get_num_params's, the N of the FLOPs per token, which keeps the tied head: not "non-embedding"
    assert f"{rows[0]['n_params'] / 1e6:.1f}M params in the FLOPs' 6N (the head's matmul included)" in printed
    assert "non-embedding" not in printed
    assert "| off | 4 |" in printed and "| - | - |" in printed  # MFU and memory shown as "-"


def write_dataset(root: Path, chars: str = "abcdefgh") -> None:
    """root/tiny: random characters as train.bin and val.bin, with their meta.json."""
    data_dir = root / "tiny"
    data_dir.mkdir()
    tokens = np.random.default_rng(0).integers(0, len(chars), size=2000).astype(np.uint16)
    for split in ("train", "val"):
        tokens.tofile(data_dir / f"{split}.bin")
    write_meta(str(data_dir), {"tokenizer": "char", "vocab_size": len(chars), "dtype": "uint16", "eot_id": None,
                               "chars": chars, "source": "test"})


def loss_after_two_steps_by_hand(row: dict[str, Any], train_bin: Path) -> float:
    """A train row's loss after two untimed steps, in plain PyTorch: the row's model drawn at bench.py's seed
    (1337); training's batches of train_bin (2 sequences of 32 tokens, built as train.py builds them); two steps of
    AdamW at train.py's default rates (6e-4, weight decay 0.1 on matrices and embeddings, betas 0.9 and 0.95), each
    on the mean loss of two batches (0 and 1, then 2 and 3), gradients clipped to norm 1; then the mean
    cross-entropy of batches 4 and 5, which the timed step trains on. (Two steps: Adam's first step is the sign of
    the gradient whatever its betas or clipping.)"""
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**{f.name: row[f.name] for f in dataclasses.fields(GPTConfig)}))
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=6e-4, betas=(0.9, 0.95))
    batches = Batches(str(train_bin), "uint16", 32, 2, 8, seed=1337, group=2)  # vocabulary: the dataset's 8

    def mean_loss(indices: list[int]) -> torch.Tensor:
        losses = [F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()) for x, y in map(batches.read, indices)]
        return sum(losses) / len(losses)

    for first in (0, 2):
        mean_loss([first, first + 1]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        return mean_loss([4, 5]).item()


def test_train_rows_read_a_dataset_as_training_does(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    rows, seconds = timed([*SHAPE, "--compile=off", "--warmup=2", "--iters=1", "--batch_size=2",
                           "--gradient_accumulation_steps=2", f"--data_root={tmp_path}", "--dataset=tiny"])
    (row,) = rows
    assert row["status"] == "ok" and row["data"] == "tiny" and row["accum"] == 2
    assert row["vocab_size"] == 64  # the dataset's 8 characters, padded to vocab_multiple as train.py pads them
    # a step is 2 micro-batches of 2 sequences of 32 tokens: 128 tokens in ms_per_iter
    assert row["tokens_per_s"] == pytest.approx(2 * 2 * 32 / (row["ms_per_iter"] / 1000), rel=1e-9)
    assert 0 < row["ms_per_iter"] / 1000 < seconds
    # the timed step's loss (training's batches 4 and 5, after two steps on 0 to 3), by hand: the same float32 ops
    # on this CPU, equal up to rounding (a tight bound: clipping and weight decay move this loss little)
    assert row["loss"] == pytest.approx(loss_after_two_steps_by_hand(row, tmp_path / "tiny" / "train.bin"), rel=1e-6)


@pytest.mark.parametrize(("vocab_flags", "vocab_size"), [
    ([], 64), (["--vocab_multiple=1"], 8), (["--vocab_size=50"], 50)])  # 8 characters: padded, not, as given
def test_the_vocabulary_is_the_datasets_padded_or_as_given(tmp_path: Path, vocab_flags: list[str],
                                                           vocab_size: int) -> None:
    write_dataset(tmp_path)
    flags = [*SHAPE, "--compile=off", "--warmup=0", "--iters=1", "--batch_size=2", *vocab_flags]
    (row,) = bench.main([*flags, f"--data_root={tmp_path}", "--dataset=tiny"])
    assert row["vocab_size"] == vocab_size


def test_a_vocabulary_too_small_for_the_dataset_is_refused(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    with pytest.raises(UserError, match="holds token id 7 >= vocab_size 4: it was prepared for another vocabulary"):
        bench.main([*TINY, "--vocab_size=4", f"--data_root={tmp_path}", "--dataset=tiny"])  # as given: unpadded


def test_every_model_switch_is_taken_as_train_py_takes_it() -> None:
    switches = {"norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope", "n_kv_head": 1, "bias": False,
                "tie_embeddings": False, "qkv_bias": True, "parallel_block": True, "attn_pattern": "alternating",
                "window_size": 8, "head_size": 8, "mlp_hidden": 48, "rope_base": 500.0}
    (row,) = bench.main([*TINY, "--batch_size=2", *(f"--{k}={v}" for k, v in switches.items())])
    assert row["status"] == "ok" and np.isfinite(row["loss"])
    assert {k: row[k] for k in switches} == switches  # the model the row timed
    resolved = train.TrainConfig(**switches, n_layer=2, n_head=2, n_embd=32, block_size=32).resolve(64)
    assert row["n_params"] == GPT(resolved).get_num_params()  # the model train.py would build from them


@pytest.mark.parametrize("where", ["missing_folder", "under_a_file"])
def test_a_json_path_that_cannot_be_written_is_refused_before_running(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch, where: str):
    (tmp_path / "a_file").write_text("not a folder", encoding="utf-8")
    path = {"missing_folder": tmp_path / "nowhere" / "rows.json", "under_a_file": tmp_path / "a_file" / "rows.json"}
    monkeypatch.setattr(bench, "run_row", lambda *args: pytest.fail("a row ran"))
    with pytest.raises(UserError, match=f"^json={re.escape(str(path[where]))}: cannot write into "):
        bench.main([*TINY, f"--json={path[where]}"])


@pytest.mark.parametrize(("flag", "message"), [
    ("--compile=maybe", "compile must be on, off or both, got 'maybe'"),
    ("--batch_size=2,x", "batch_size must be a comma list of integers"),
    ("--batch_size=0", "batch_size needs at least one value, each at least 1"),
    ("--iters=0", "iters must be at least 1"),
    ("--n_head=3", r"n_embd \(32\) must be divisible by n_head \(3\)"),
    ("--preset=gpt4", "unknown preset 'gpt4'"),
    ("--dataset=missing", "meta.json not found"),
    ("--mode=serve", "mode must be train, sample or attention, got 'serve'"),
    ("--vocab_size=0", r"vocab_size must be at least 1 \(or None\), got 0"),
    ("--vocab_multiple=0", "vocab_multiple must be at least 1, got 0"),
    ("--backend=mpi", "backend must be auto, nccl or gloo, got 'mpi'")])
def test_settings_it_cannot_run_are_one_line(flag: str, message: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "run_row", lambda *args: pytest.fail("a row ran"))
    with pytest.raises(UserError, match=message):
        bench.main([*TINY, f"--data_root={tmp_path}", flag])


def test_sample_rows_fill_the_table_and_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sample.json"
    rows, wall = timed([*SAMPLE, "--batch_size=1,2", "--new_tokens=8,16", "--kv_cache=both", f"--json={out}"])
    assert [(r["kv_cache"], r["batch_size"], r["new_tokens"]) for r in rows] == [
        (kv, b, n) for kv in ("on", "off") for b in (1, 2) for n in (8, 16)]
    for r in rows:
        assert r["status"] == "ok" and r["compile"] == "off" and r["mode"] == "sample" and r["prompt_tokens"] == 4
        assert r["cuda_graph"] == "off"  # asked for by default, but a CPU has none
        assert r["vocab_size"] == 50257 and r["device"] == "cpu" and r["dtype"] == "float32"  # GPT-2's own vocab
        seconds = r["ms_per_token"] * r["new_tokens"] / 1000  # the timed generation, within the call's own time
        assert 0 < r["first_token_ms"] / 1000 <= seconds < wall
        assert r["tokens_per_s"] > r["batch_size"] * r["new_tokens"] / wall
        assert r["tokens_per_s_per_row"] > r["new_tokens"] / wall
        assert r["peak_mem_gib"] is None
    assert json.loads(out.read_text()) == rows
    printed = capsys.readouterr().out
    assert ("| compile | CUDA graph | KV cache | batch | new tokens | tokens/s | tokens/s per row | ms/token | "
            "first token (ms) | peak mem (GiB) | warm-up (s) |") in printed
    assert "vocab 50257" in printed and "random 4-token prompts" in printed
    assert "| off | off | off | 2 | 16 |" in printed


def test_sample_rows_run_past_block_size_and_compile_only_with_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[bool] = []  # each time a compiled decode step was asked for (left eager: compiling takes seconds)

    def eager_step(cuda: bool) -> Callable[..., torch.Tensor]:
        compiled.append(cuda)
        return generate.decode_one

    monkeypatch.setattr(generate, "compiled_decode_one", eager_step)
    # 4 + 100 tokens > block 64: generate_tokens jumps its window; the no-cache row runs eager whatever compile says
    rows = bench.main([*SAMPLE, "--batch_size=1", "--new_tokens=100", "--kv_cache=both", "--compile=on",
                       "--vocab_size=64"])
    assert [(r["compile"], r["kv_cache"], r["status"]) for r in rows] == [("on", "on", "ok"), ("off", "off", "ok")]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert compiled == [False, False]  # the cached row only: its untimed and timed generations


def test_attention_rows_time_dense_and_banded_layers_alike(capsys: pytest.CaptureFixture[str]) -> None:
    rows = bench.main(["--mode=attention", "--device=cpu", "--n_head=2", "--n_embd=32", "--batch_size=2",
                       "--seq_lens=40,70", "--band=8", "--warmup=1", "--iters=2"])
    assert [(r["seq_len"], r["attention"], r["status"]) for r in rows] == [
        (40, "dense", "ok"), (40, "banded", "ok"), (70, "dense", "ok"), (70, "banded", "ok")]
    assert all(r["forward_ms"] > 0 and r["step_ms"] > 0 for r in rows)
    assert [r["max_diff"] is None for r in rows] == [True, False, True, False]
    assert all(r["max_diff"] < 1e-5 for r in rows[1::2])  # the CPU's banded path against the explicit mask
    assert "| batch | T | attention | forward (ms) | forward + backward (ms) | max abs diff vs mask |" in (
        capsys.readouterr().out)
    with pytest.raises(UserError, match="band must be at least 1"):
        bench.main(["--mode=attention", "--device=cpu", "--band=0"])


def test_fp8_is_refused_in_one_line_where_it_cannot_run() -> None:
    with pytest.raises(UserError, match=r"^fp8=True needs a CUDA GPU with FP8 matrix multiplies \(H100, L4, RTX "
                                        r"40xx\), not cpu$"):  # first: torchao would not help
        bench.main([*TINY, "--fp8=True"])


@pytest.mark.parametrize(("flag", "message"), [
    ("--kv_cache=maybe", "kv_cache must be on, off or both, got 'maybe'"),
    ("--cuda_graph=maybe", "cuda_graph must be on, off or both, got 'maybe'"),
    ("--new_tokens=0", "new_tokens needs at least one value, each at least 1"),
    ("--new_tokens=8,x", "new_tokens must be a comma list of integers"),
    ("--prompt_tokens=0", "prompt_tokens must be at least 1"),
    ("--dataset=tiny", "mode=sample times random prompts: drop --dataset")])
def test_sample_settings_it_cannot_run_are_one_line(flag: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        bench.main([*SAMPLE, flag])


def test_a_row_out_of_memory_is_recorded_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    real_row = bench.bench_row

    def row_or_oom(*args: object) -> dict:
        if args[-1] == 4:  # batch size 4 does not fit
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_row(*args)

    monkeypatch.setattr(bench, "bench_row", row_or_oom)
    rows = bench.main([*TINY, "--batch_size=4,2"])
    assert [(r["batch_size"], r["status"]) for r in rows] == [(4, "OOM"), (2, "ok")]
    assert rows[0]["ms_per_iter"] is None and rows[1]["ms_per_iter"] > 0
    assert "| off (OOM) | 4 | - | - | - | - | - | - |" in capsys.readouterr().out


def test_profile_writes_a_trace_per_row_and_prints_the_longest_operations(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bench.main([*TINY, "--batch_size=2", "--iters=2", f"--profile={tmp_path / 'prof'}"])
    trace = json.loads((tmp_path / "prof" / "eager_batch2.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "aten::mm" in names or "aten::addmm" in names  # the model's matmuls, as the profiler saw them run
    out = capsys.readouterr().out
    assert "profile of eager_batch2" in out and "Self CPU" in out and "aten::" in out
