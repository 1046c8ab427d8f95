"""train.py: its settings and their refusals, the learning-rate schedule, a tiny run that learns, what its
checkpoints record, exact resume, and the log: timings, the pace, the GPU-recipe warning."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import configurator
import evaluate
import generate
import metrics
import optim
import parallel
import step
import train
from configurator import UserError
from conftest import REPO_ROOT, CharData, Trained, make_char_dataset, ready_to_decode, tiny_flags
from model import GPTConfig

# ---------------------------------------------------------------------------------------------- settings


def test_lr_decay_iters_left_unset_ends_the_schedule_with_the_run():
    assert train.TrainConfig(max_iters=500).lr_decay_iters == 500
    assert train.TrainConfig(max_iters=500, lr_decay_iters=300).lr_decay_iters == 300
    cfg = configurator.load(train.TrainConfig, ["--max_iters=50", "--warmup_iters=5", "--min_lr=1e-5"])
    assert cfg.lr_decay_iters == 50
    assert train.get_lr(49, cfg) > cfg.min_lr and train.get_lr(50, cfg) == cfg.min_lr


def test_a_run_that_stops_before_its_schedule_ends_is_told_so():
    cut = train.TrainConfig(max_iters=1000, lr_decay_iters=5000, warmup_iters=50, lr_schedule="wsd")
    note = train.schedule_note(cut)
    assert "lr_decay_iters=5000" in note and "max_iters=1000" in note and "starts at 3000" in note
    assert train.get_lr(999, cut) == cut.learning_rate  # the note's point: this run never decays
    assert "starts at" not in train.schedule_note(dataclasses.replace(cut, lr_schedule="cosine"))
    assert train.schedule_note(dataclasses.replace(cut, lr_decay_iters=1000)) is None
    assert train.schedule_note(dataclasses.replace(cut, decay_lr=False)) is None


class ProcessGroupStarted(Exception):
    """Raised where a process group would be made, with its backend: train.main goes no further."""


@pytest.mark.parametrize(("backend", "group"), [("auto", "gloo"), ("nccl", "nccl"), ("gloo", "gloo")])
def test_backend_auto_nccl_or_gloo_is_taken(char_data: CharData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            backend: str, group: str):
    # train.py as torchrun starts rank 0 of 2 on CPUs: the flag reaches the process group (auto is gloo there), no
    # check refusing it on the way. Without RANK no group is made, and the backend would be neither used nor seen.
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)

    def start(backend: str, **kwargs: object) -> None:
        raise ProcessGroupStarted(backend)

    monkeypatch.setattr(parallel.dist, "init_process_group", start)
    monkeypatch.setattr(parallel.dist, "is_nccl_available", lambda: True)  # as on a GPU machine, whose CUDA
    monkeypatch.setattr(parallel.torch.cuda, "is_available", lambda: backend == "nccl")  # auto would then take
    with pytest.raises(ProcessGroupStarted, match=f"^{group}$"):
        train.main(tiny_flags(char_data, tmp_path / "out", backend=backend, gradient_accumulation_steps=2))


@pytest.mark.parametrize(("cuda", "nccl"), [(False, True), (True, False)])
def test_nccl_where_there_is_none_is_one_line_before_any_group(char_data: CharData, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, cuda: bool, nccl: bool):
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(parallel.dist, "init_process_group", lambda **kwargs: pytest.fail("a group was started"))
    monkeypatch.setattr(parallel.dist, "is_nccl_available", lambda: nccl)
    monkeypatch.setattr(parallel.torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(UserError, match=r"^backend=nccl needs CUDA GPUs and a torch built with NCCL, and this "
                                        r"machine has none: use backend=gloo \(or auto\)$"):
        train.main(tiny_flags(char_data, tmp_path / "out", backend="nccl", gradient_accumulation_steps=2))


def test_another_backend_is_refused_in_one_line(char_data: CharData, tmp_path: Path):
    with pytest.raises(UserError, match=r"^backend must be auto, nccl or gloo, got 'mpi'$"):
        train.main(tiny_flags(char_data, tmp_path / "out", backend="mpi"))


@pytest.mark.parametrize(("flag", "expected"), [
    ("--learning_rate=-1", "learning_rate must be at least 0, got -1.0"),
    ("--min_lr=-0.1", "min_lr must be at least 0, got -0.1"),
    ("--weight_decay=-1", "weight_decay must be at least 0, got -1.0"),
    ("--grad_clip=-1", "grad_clip must be at least 0, got -1.0"),
    ("--warmup_iters=-5", "warmup_iters must be at least 0, got -5"),
    ("--lr_decay_iters=-5", "lr_decay_iters must be at least 0, got -5"),
    ("--beta1=1", r"beta1 must be in \[0, 1\), got 1.0"),
    ("--beta2=-0.5", r"beta2 must be in \[0, 1\), got -0.5")])
def test_out_of_range_optimizer_settings_are_one_line(char_data: CharData, tmp_path: Path, flag: str,
                                                      expected: str):
    with pytest.raises(UserError, match=expected):
        train.main([*tiny_flags(char_data, tmp_path / "out"), flag])


# ---------------------------------------------------------------------------------------------- lr schedule


def schedule(**overrides: object) -> train.TrainConfig:
    args = {"learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10, "lr_decay_iters": 110} | overrides
    return train.TrainConfig(**args)


def test_lr_warmup_is_linear_from_near_zero():
    cfg = schedule()
    lrs = [train.get_lr(it, cfg) for it in range(cfg.warmup_iters)]
    steps = np.diff(lrs)
    assert 0 < lrs[0] <= cfg.learning_rate / cfg.warmup_iters
    assert np.allclose(steps, steps[0], rtol=1e-9)
    assert steps[0] > 0


def test_lr_reaches_learning_rate_at_end_of_warmup():
    cfg = schedule()
    assert train.get_lr(cfg.warmup_iters, cfg) == pytest.approx(cfg.learning_rate, rel=1e-12)
    assert train.get_lr(cfg.warmup_iters - 1, cfg) < cfg.learning_rate
    # the warmup line lands exactly on learning_rate where the cosine starts: no jump
    step = train.get_lr(1, cfg) - train.get_lr(0, cfg)
    assert train.get_lr(cfg.warmup_iters - 1, cfg) + step == pytest.approx(cfg.learning_rate, rel=1e-12)


def test_lr_cosine_midpoint():
    cfg = schedule()
    mid = (cfg.warmup_iters + cfg.lr_decay_iters) // 2
    assert train.get_lr(mid, cfg) == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2, rel=1e-12)


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    cfg = train.TrainConfig(lr_schedule="wsd", learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=100,
                            max_iters=100, decay_fraction=0.4)
    # by hand: warmup (it + 1) / 11; stable at 1.0 from 10 to 59; from 60 to 100 a straight line from 1.0 to 0.1
    hand = {0: 1 / 11, 9: 10 / 11, 10: 1.0, 59: 1.0, 60: 1.0, 70: 1.0 - 0.9 * 10 / 40, 80: 0.55,
            99: 1.0 - 0.9 * 39 / 40, 100: 0.1, 150: 0.1}
    assert {it: train.get_lr(it, cfg) for it in hand} == pytest.approx(hand, rel=1e-12)


def test_wsd_with_no_decay_fraction_stays_at_the_peak_until_the_end():
    cfg = train.TrainConfig(lr_schedule="wsd", learning_rate=0.5, min_lr=0.0, warmup_iters=0, max_iters=20,
                            decay_fraction=0.0)
    assert [train.get_lr(it, cfg) for it in (0, 10, 19)] == [0.5, 0.5, 0.5]
    assert train.get_lr(20, cfg) == 0.0


def test_the_run_stops_at_the_target_val_loss_and_reports_it(char_data: CharData, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]):
    # an eval at each of iters 2, 4, ...: the first at or below the target ends the run, with a checkpoint
    free = train.main(tiny_flags(char_data, tmp_path / "free", max_iters=12, eval_interval=2))
    vals = {i: v for i, _, v in free["eval"]}
    target = vals[6] + 1e-6  # reached at iter 6 (the loss falls steadily here)
    assert all(v > target for i, v in vals.items() if i < 6)
    capsys.readouterr()
    run = train.main(tiny_flags(char_data, tmp_path / "target", max_iters=12, eval_interval=2, target_val_loss=target,
                                always_save_checkpoint=False))
    out = capsys.readouterr().out
    assert [i for i, _, _ in run["eval"]] == [2, 4, 6] and run["train_loss"][-1][0] == 6
    line = next(line for line in out.splitlines() if line.startswith("target val loss"))
    assert re.fullmatch(rf"target val loss {target} reached: {vals[6]:.4f} at iter 6, {6 * 8 * 32:,} tokens, "
                        r"[\d.]+ s from launch, [\d.]+ CPU-hours \(1 CPU\(s\)\)", line), line
    assert checkpoint.read(str(tmp_path / "target")).header.iter_num == 6


def test_lr_decays_monotonically_to_min_lr():
    cfg = schedule()
    lrs = [train.get_lr(it, cfg) for it in range(cfg.warmup_iters, cfg.lr_decay_iters + 1)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    for it in (cfg.lr_decay_iters, cfg.lr_decay_iters + 1, 10 * cfg.lr_decay_iters):
        assert train.get_lr(it, cfg) == cfg.min_lr


def test_lr_constant_without_decay():
    cfg = schedule(decay_lr=False)
    assert {train.get_lr(it, cfg) for it in (0, 5, 10, 60, 110, 1000)} == {cfg.learning_rate}


# ---------------------------------------------------------------------------------------------- the loop


def test_tiny_run_loss_falls(char_data: CharData, tmp_path: Path):
    history = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=60, eval_interval=60, eval_at_start=True))
    losses = [loss for _, loss in history["train_loss"]]
    assert [it for it, _ in history["train_loss"]] == list(range(1, 61))
    assert all(math.isfinite(v) for v in losses)
    start, end = losses[0], np.mean(losses[-5:])  # from ln(vocab) ~ 4.1 to below the unigram entropy ~ 3.3
    assert end < start - 0.75, (start, end)
    (it0, _, val0), (it1, _, val1) = history["eval"]
    assert (it0, it1) == (0, 60)
    assert val1 < val0 - 0.75, (val0, val1)


@pytest.mark.parametrize("at_start", [False, True])
def test_evaluation_before_the_first_step_only_when_asked(char_data: CharData, tmp_path: Path, at_start: bool):
    history = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=4, eval_interval=2,
                                    eval_at_start=at_start))
    assert [it for it, _, _ in history["eval"]] == ([0, 2, 4] if at_start else [2, 4])
    # a resumed run evaluates where it starts (a stop may have come between a step and its evaluation)
    resumed = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=6, eval_interval=2, init_from="resume",
                                    eval_at_start=at_start))
    assert [it for it, _, _ in resumed["eval"]] == [4, 6]


def test_the_checkpoint_records_the_run(trained: Trained):
    header = checkpoint.read(str(trained.out_dir)).header
    assert header.iter_num == 12
    assert header.batch_pos == 12  # gradient_accumulation_steps=1: one batch per iteration
    assert header.meta == trained.data.meta
    assert header.config["max_iters"] == 12
    padded = -(-trained.data.meta["vocab_size"] // 64) * 64  # the char vocab padded to a multiple of 64
    expected = {"vocab_size": padded, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0,
                "bias": True}
    assert header.model_args == dataclasses.asdict(GPTConfig(**expected))  # every switch at its GPT-2 default
    assert [it for it, _, _ in trained.history["eval"]] == [6, 12]  # none before the first step
    assert header.best_val_loss == min(val for _, _, val in trained.history["eval"])
    assert isinstance(header.rng["torch"], torch.Tensor)
    assert (header.tensor_parallel, header.rng_ranks) == (1, None)  # one process: one file


def test_latest_and_best_checkpoints(char_data: CharData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # evaluations at 2, 4, 6 with scripted val losses 3.0, 2.0, 2.5: best.pt holds iteration 4, ckpt.pt 6
    scripted = iter([3.0, 2.0, 2.5])
    monkeypatch.setattr(train, "estimate_loss", lambda *args, **kwargs: {"train": 1.0, "val": next(scripted)})
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=6, eval_interval=2))
    assert checkpoint.read(str(out_dir)).header.iter_num == 6
    best_ckpt = checkpoint.read(str(out_dir), which="best")
    assert (best_ckpt.header.iter_num, best_ckpt.header.best_val_loss) == (4, 2.0)
    # .lock: checkpoint.hold_out_dir; metrics.jsonl: the run's record (metrics.py)
    assert sorted(p.name for p in out_dir.iterdir()) == [".lock", "best.pt", "ckpt.pt", "metrics.jsonl"]
    best = ready_to_decode(str(out_dir))[0]
    latest = ready_to_decode(str(out_dir), "latest")[0]
    weights = best_ckpt.model["transformer.h.0.attn.c_attn.weight"]
    assert torch.equal(best.transformer.h[0].attn.c_attn.weight, weights)  # sample.py reads best.pt by default
    assert not torch.equal(latest.transformer.h[0].attn.c_attn.weight, weights)


@pytest.mark.parametrize(("compile", "dropout", "train_graph"), [(False, 0.0, False), (True, 0.0, True),
                                                                 (True, 0.1, False)])
def test_a_compiled_model_without_dropout_is_evaluated_through_its_training_graph(
        char_data: CharData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compile: bool, dropout: float,
        train_graph: bool):
    # the graph it was compiled for, rather than a second compilation before the first step (test_evaluate: the
    # losses are the same); with dropout the training graph would drop
    monkeypatch.setattr(parallel.runtime, "maybe_compile", lambda model, *args, **kwargs: model)  # seconds saved
    asked = []

    def estimate_loss(*args: object, **kwargs: object) -> dict[str, float]:
        asked.append(kwargs["train_graph"])
        return {"train": 1.0, "val": 1.0}

    monkeypatch.setattr(train, "estimate_loss", estimate_loss)
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=2, eval_interval=2, compile=compile,
                          dropout=dropout))
    assert asked == [train_graph]


def test_cuda_graph_on_a_cpu_trains_as_without_it_and_says_nothing(char_data: CharData, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]):
    graphed = train.main(tiny_flags(char_data, tmp_path / "a", cuda_graph=True))
    assert "without a CUDA graph" not in capsys.readouterr().out  # a GPU recipe on a CPU: no graph to miss
    plain = train.main(tiny_flags(char_data, tmp_path / "b"))
    assert graphed["train_loss"] == plain["train_loss"]
    assert checkpoint.read(str(tmp_path / "a")).header.config["cuda_graph"] is False


@pytest.mark.slow
def test_a_compiled_run_trains_as_an_eager_one_and_saves_without_prefixes(char_data: CharData, tmp_path: Path,
                                                                          recwarn: pytest.WarningsRecorder,
                                                                          capsys: pytest.CaptureFixture[str]):
    flags = {"max_iters": 2, "eval_interval": 2, "n_layer": 1}  # one layer: the compile takes half the time
    history = train.main(tiny_flags(char_data, tmp_path / "out", compile=True, **flags))
    assert not [str(w.message) for w in recwarn if "torch.compile failed" in str(w.message)]
    eager = train.main(tiny_flags(char_data, tmp_path / "eager", compile=False, **flags))
    assert capsys.readouterr().out.count("compiling the model (torch.compile") == 1  # the silence said, once
    assert [it for it, _ in history["train_loss"]] == [1, 2]
    for (_, compiled_loss), (_, eager_loss) in zip(history["train_loss"], eager["train_loss"], strict=True):
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)  # the same model, fused kernels
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["model"] if k.startswith("_orig_mod.")]


def test_wandb_logs_offline(char_data: CharData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """wandb_log=True with WANDB_MODE=offline writes a local run holding the eval metrics."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=2, eval_interval=1, wandb_log=True,
                          wandb_project="test", wandb_run_name="tiny"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the run holds no logged data"


# ---------------------------------------------------------------------------------------------- resume


def test_resume_is_exact(char_data: CharData, tmp_path: Path):
    common = {"dropout": 0.1, "eval_interval": 4, "always_save_checkpoint": True, "decay_lr": True,
              "warmup_iters": 2, "lr_decay_iters": 8, "min_lr": 1e-3, "gradient_accumulation_steps": 2}
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=8, **common))
    out_dir = tmp_path / "resumed"
    first = train.main(tiny_flags(char_data, out_dir, max_iters=4, **common))
    second = train.main(tiny_flags(char_data, out_dir, max_iters=8, init_from="resume", **common))
    assert first["train_loss"] == straight["train_loss"][:4]
    assert second["train_loss"] == straight["train_loss"][4:]  # iterations 5..8, bit for bit
    assert second["eval"][-1] == straight["eval"][-1]
    assert checkpoint.read(str(out_dir)).header.iter_num == 8


def test_a_shuffled_data_order_trains_and_resumes_exactly(char_data: CharData, tmp_path: Path):
    common = {"eval_interval": 3, "data_order": "shuffled", "gradient_accumulation_steps": 2}
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=6, **common))
    train.main(tiny_flags(char_data, tmp_path / "resumed", max_iters=3, **common))
    second = train.main(tiny_flags(char_data, tmp_path / "resumed", max_iters=6, init_from="resume", **common))
    assert second["train_loss"] == straight["train_loss"][3:]
    randomly = train.main(tiny_flags(char_data, tmp_path / "random", max_iters=6, **common | {"data_order": "random"}))
    assert randomly["train_loss"][0] != straight["train_loss"][0]  # other sequences
    with pytest.raises(train.UserError, match=r"^data_order must be random or shuffled, got 'sorted'$"):
        train.main(tiny_flags(char_data, tmp_path / "bad", max_iters=2, data_order="sorted"))


def test_a_checkpoint_resumes_with_this_machines_way_of_stepping(char_data: CharData, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    # saved by the plain AdamW (a CPU), resumed where the fused one steps (a GPU; fused AdamW runs on CPUs too)
    flags = tiny_flags(char_data, tmp_path / "out", max_iters=4, eval_interval=4)
    train.main(flags)
    plain = train.main(tiny_flags(char_data, tmp_path / "plain", max_iters=6, eval_interval=4))
    real = optim.adamw

    def fused(model: train.GPT, *args: object) -> torch.optim.AdamW:
        optimizer = real(model, *args)
        return torch.optim.AdamW(optimizer.param_groups, fused=True)

    monkeypatch.setattr(optim, "adamw", fused)
    resumed = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=6, eval_interval=4, init_from="resume"))
    assert [it for it, _ in resumed["train_loss"]] == [5, 6]
    for (_, ours), (_, theirs) in zip(resumed["train_loss"], plain["train_loss"][4:], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-4)  # the same update, by another kernel


def test_a_resume_with_no_settings_continues_the_checkpoints_run(char_data: CharData, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]):
    # the run's data, batch, accumulation, schedule and evaluation come from the checkpoint, its model from the
    # weights: only out_dir, init_from, the longer max_iters and this machine's device are given, as a user who lost
    # the command line would give them
    common = {"eval_interval": 4, "decay_lr": True, "warmup_iters": 2, "lr_decay_iters": 8, "min_lr": 1e-3,
              "gradient_accumulation_steps": 2, "batch_size": 4, "n_layer": 1, "seed": 7}
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=8, **common))
    out_dir = tmp_path / "resumed"
    train.main(tiny_flags(char_data, out_dir, max_iters=4, **common))
    capsys.readouterr()
    second = train.main([f"--out_dir={out_dir}", "--init_from=resume", "--max_iters=8", "--device=cpu"])
    assert second["train_loss"] == straight["train_loss"][4:]  # iterations 5..8, bit for bit
    assert second["eval"][-1] == straight["eval"][-1]
    out = capsys.readouterr().out
    assert re.findall("^note: this resume .*", out, re.MULTILINE) == [
        f"note: this resume changes the run in {out_dir}: max_iters 4 -> 8"]
    assert "256 tokens per iteration" in out  # 4 sequences x 2 micro-steps x 32 tokens: the run's, not the default


def test_a_resume_says_what_the_settings_given_change_of_its_run(trained: Trained, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]):
    out_dir = tmp_path / "out"
    shutil.copytree(trained.out_dir, out_dir)
    other = make_char_dataset(tmp_path / "data", name="other_name")  # the same characters under another name
    train.main([f"--out_dir={out_dir}", "--init_from=resume", "--device=cpu", f"--data_root={other.root}",
                "--dataset=other_name",
                "--gradient_accumulation_steps=2", "--learning_rate=5e-3", "--max_iters=14"])
    notes = re.findall("^note: this resume .*", capsys.readouterr().out, re.MULTILINE)
    assert notes == [f"note: this resume changes the run in {out_dir}: dataset {trained.data.name} -> other_name; "
                     "sequences per step 8 -> 16 (batch_size x gradient_accumulation_steps); learning_rate 0.01 -> "
                     "0.005; lr_decay_iters 12 -> 14; max_iters 12 -> 14"]
    assert checkpoint.read(str(out_dir)).header.config["dataset"] == "other_name"  # the run goes on with them


def test_a_schedule_that_ended_with_the_run_ends_with_a_longer_resumed_run(char_data: CharData, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]):
    # lr_decay_iters left to max_iters (4): a resume to 8 decays to 8, and says so; one given stays as given
    schedule = {"decay_lr": True, "warmup_iters": 1, "min_lr": 1e-3}
    train.main(tiny_flags(char_data, tmp_path / "a", max_iters=4, **schedule))
    train.main(tiny_flags(char_data, tmp_path / "b", max_iters=4, lr_decay_iters=6, **schedule))
    capsys.readouterr()
    for name in ("a", "b"):
        train.main([f"--out_dir={tmp_path / name}", "--init_from=resume", "--max_iters=8", "--device=cpu"])
    notes = re.findall("^note: this resume .*", capsys.readouterr().out, re.MULTILINE)
    assert notes == [f"note: this resume changes the run in {tmp_path / 'a'}: lr_decay_iters 4 -> 8; max_iters 4 -> 8",
                     f"note: this resume changes the run in {tmp_path / 'b'}: max_iters 4 -> 8"]
    config = {name: checkpoint.read(str(tmp_path / name)).header.config for name in ("a", "b")}
    assert (config["a"]["lr_decay_iters"], config["b"]["lr_decay_iters"]) == (8, 6)


def test_a_checkpoint_whose_settings_do_not_fit_is_refused_in_one_line(trained: Trained, tmp_path: Path):
    ckpt = torch.load(trained.out_dir / "ckpt.pt", weights_only=True)
    ckpt["config"]["batch_size"] = "many"
    (tmp_path / "out").mkdir()
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    with pytest.raises(UserError, match=rf"^the checkpoint in {re.escape(str(tmp_path / 'out'))}: setting "
                                        r"'batch_size' expects int, got 'many'$"):
        train.main([f"--out_dir={tmp_path / 'out'}", "--init_from=resume", "--device=cpu"])


def test_resume_refuses_a_shape_other_than_the_checkpoints(trained: Trained, tmp_path: Path):
    out_dir = tmp_path / "out"
    shutil.copytree(trained.out_dir, out_dir)
    before = (out_dir / "ckpt.pt").read_bytes()
    flags = tiny_flags(trained.data, out_dir, max_iters=13, init_from="resume", n_layer=3, n_embd=48)
    with pytest.raises(UserError, match="has n_layer=2, the settings ask for n_layer=3"):
        train.main(flags)
    assert (out_dir / "ckpt.pt").read_bytes() == before  # the checkpoint is untouched


# ---------------------------------------------------------------------------------------------- the log


@pytest.mark.parametrize(("flags", "message"), [
    ({"sample_prompts": "ab\u00a7"}, "characters not in the model's vocabulary: '\u00a7'"),
    ({"sample_prompts": "a||b"}, "sample_prompts: an empty prompt in 'a||b'"),
    ({"sample_interval": -1}, "sample_interval must be at least 0 (0: never), got -1"),
    ({"sample_tokens": 0}, "sample_tokens must be at least 1, got 0"),
])
def test_samples_that_cannot_be_made_are_refused_before_training(char_data: CharData, tmp_path: Path,
                                                                 flags: dict, message: str):
    with pytest.raises(UserError, match=re.escape(message)):
        train.main(tiny_flags(char_data, tmp_path / "out", **{"sample_interval": 1} | flags))
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def test_the_log_and_the_checkpoint_say_what_made_them(char_data: CharData, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]):
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=2, eval_interval=2))
    head = re.search(r"^run: code (\S+), torch (\S+), python (\S+), device cpu, command (.*)$", capsys.readouterr().out,
                     re.M)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert head and head[1].removesuffix("+changes") == commit and head[2] == str(torch.__version__), head
    saved = checkpoint.read(str(tmp_path / "out")).header.provenance
    assert saved == {"code": head[1], "torch": head[2], "python": head[3], "device": "cpu", "command": head[4]}


def test_samples_during_training_run_under_mixed_precision(char_data: CharData, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]):
    # float32 weights, a bfloat16 forward (the GPU recipes' dtype): the KV cache takes keys of another dtype
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=2, eval_interval=2, dtype="bfloat16",
                          sample_interval=1, sample_tokens=8))
    lines = re.findall(r"^sample at iter 2, (greedy|sampled): '\\n' -> (.*)$", capsys.readouterr().out, re.M)
    assert [way for way, _ in lines] == ["greedy", "sampled"]
    assert all(len(ast.literal_eval(text)) == 8 for _, text in lines)


def test_samples_during_training_are_the_models_and_leave_the_training_as_it_was(char_data: CharData,
                                                                                 tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture[str]):
    flags = {"max_iters": 8, "eval_interval": 4, "always_save_checkpoint": True, "dropout": 0.1}
    prompts = [char_data.meta["chars"][10:13], "\n"]
    sampled = train.main(tiny_flags(char_data, tmp_path / "s", sample_interval=1, sample_tokens=12,
                                    sample_prompts="|".join(prompts), **flags))
    out = capsys.readouterr().out
    plain = train.main(tiny_flags(char_data, tmp_path / "p", **flags))
    assert sampled == plain  # the samples draw from a random state of their own: dropout saw the same one
    lines = re.findall(r"^sample at iter (\d+), (greedy|sampled): (.*) -> (.*)$", out, re.M)
    assert [(int(i), way, ast.literal_eval(p)) for i, way, p, _ in lines] == [
        (i, way, p) for i in (4, 8) for p in prompts for way in ("greedy", "sampled")]
    assert all(len(ast.literal_eval(text)) == 12 for *_, text in lines)
    # the greedy continuation at iter 8 is what the checkpoint saved there continues greedily
    model, tok = ready_to_decode(str(tmp_path / "s"), which="latest")
    idx = torch.tensor([tok.encode(prompts[0])])
    greedy = tok.decode(generate.generate(model, idx, 12, generate.GREEDY)[0, idx.size(1):].tolist())
    assert ast.literal_eval(lines[4][3]) == greedy
    rows = [r for r in metrics.read(str(tmp_path / "s")) if r["kind"] == "sample"]
    assert [(r["iter"], r["prompt"], r["greedy"]) for r in rows][2] == (8, prompts[0], greedy)




def test_timings_stay_right_when_evaluations_fall_between_logs(char_data: CharData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    # a clock that only training steps (1 s each) and evaluations (100 s each) move: every log must say 1000 ms
    now = [0.0]
    real_eval = train.evaluate_and_save

    class ClockedStep(step.Step):
        def __call__(self, *args: object) -> object:
            now[0] += 1.0
            return super().__call__(*args)

    def evaluate_and_save(*args: object) -> None:
        now[0] += 100.0
        real_eval(*args)

    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(step, "Step", ClockedStep)
    monkeypatch.setattr(train, "evaluate_and_save", evaluate_and_save)
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=12, eval_interval=3, log_interval=2))
    out = capsys.readouterr().out
    timings = re.findall(r"^iter \d+: .*, ([\d.]+) ms/iter", out, re.MULTILINE)
    assert len(timings) == 6 and set(timings) == {"1000.0"}
    assert not re.search("^warning", out, re.MULTILINE)  # a run of CPU size is not warned
    # the ETA: the wall time per iteration since the first steady interval began (after the evaluation at iter 3,
    # at 103 s), evaluations included: at iter 6 (106 s, no evaluation yet) 3 s / 3 iterations x 6 left = 6 s; at
    # iter 8 (after the one at iter 6) 105 / 5 x 4 = 84 s; at iter 10, 207 / 7 x 2 = 59 s; none at the end
    etas = dict(re.findall(r"^iter (\d+): .*?(?:, eta (.*))?$", out, re.MULTILINE))
    assert etas == {"2": "", "4": "", "6": "6 s", "8": "84 s", "10": "59 s", "12": ""}


@pytest.mark.parametrize(("quiet_s", "logged"), [(0.0, [1, 2, 3]), (1e9, [])])
def test_a_log_line_comes_at_least_every_quiet_seconds_whatever_log_interval_says(
        char_data: CharData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_s: float, logged: list[int]):
    # QUIET_S 0: every step is overdue; a long QUIET_S leaves log_interval's own lines, of which there are none
    monkeypatch.setattr(metrics, "QUIET_S", quiet_s)
    history = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=3, log_interval=1000))
    assert [it for it, _ in history["train_loss"]] == logged


def test_no_pace_is_told_for_no_iterations_left(char_data: CharData, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]):
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=2))  # steady only from the last iteration on
    out = capsys.readouterr().out
    assert re.search(r"^iter 2: ", out, re.MULTILINE) and "at this pace" not in out
    train.main(tiny_flags(char_data, tmp_path / "more", max_iters=3))  # where one is left, it is told
    assert "at this pace the remaining 1 iterations take about" in capsys.readouterr().out


def test_a_gpu_recipe_on_the_cpu_is_warned_and_the_pace_is_told(char_data: CharData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(metrics, "CPU_WARNING_FLOPS", 1e6)  # the tiny model stands for GPT-2 124M
    monkeypatch.setattr(evaluate, "PROGRESS_S", -1.0)  # and every evaluation batch for a long wait
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=4, eval_iters=2))
    out = capsys.readouterr().out
    assert re.search(r"^warning: [\d.]+ TFLOP per iteration on the CPU: this is a GPU recipe", out, re.MULTILINE)
    # told after the second step: the first one's time holds start-up work
    assert re.search(r"^iter 2: .*\nat this pace the remaining 2 iterations take about \d+ s, evaluations not "
                     r"included$", out, re.MULTILINE)
    assert out.count("at this pace") == 1
    assert "evaluating the train split: 2 of 2 batches" in out and "evaluating the val split: 1 of 2 batches" in out


def test_the_run_says_its_layout_and_tokens_per_iteration(char_data: CharData, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]):
    # 128 wide: the embeddings are a hundredth of the weights, which the log's two decimals show
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=1, gradient_accumulation_steps=3, n_embd=128))
    weights = checkpoint.read(str(tmp_path / "out")).model
    total = sum(t.numel() for name, t in weights.items() if name != "lm_head.weight")  # tied to wte
    embeddings = weights["transformer.wte.weight"].numel() + weights["transformer.wpe.weight"].numel()
    assert f"{total / 1e6:.2f}" != f"{(total - embeddings) / 1e6:.2f}"
    # 3 micro-batches of 8 sequences of 32 tokens
    assert f"\n{total / 1e6:.2f}M parameters ({(total - embeddings) / 1e6:.2f}M non-embedding), device cpu, " \
           "torch.float32, 1 process, 768 tokens per iteration\n" in capsys.readouterr().out


def test_bits_per_byte_is_in_the_log_the_checkpoint_and_eval_only(char_data: CharData, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]):
    # every character of this text is one UTF-8 byte, so by hand: bits per byte = loss per token / ln 2
    assert all(len(c.encode()) == 1 for c in char_data.meta["chars"])
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2))
    line = re.search(r"^step 2: train loss [\d.]+, val loss ([\d.]+), val bpb ([\d.]+)", capsys.readouterr().out,
                     re.MULTILINE)
    assert float(line[2]) == pytest.approx(float(line[1]) / math.log(2), abs=2e-4)
    saved = checkpoint.read(str(out_dir)).header.evaluation
    assert saved["iter"] == 2 and saved["val_bpb"] == pytest.approx(saved["val"] / math.log(2), rel=1e-6)
    assert f"{saved['val_bpb']:.4f}" == line[2]
    train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2, init_from="resume", eval_only=True))
    assert f"step 2: train loss {saved['train']:.4f}, val loss {saved['val']:.4f}, val bpb {saved['val_bpb']:.4f}" \
        in capsys.readouterr().out


def test_a_checkpoint_saved_before_a_resumed_runs_first_evaluation_keeps_the_last_one(
        char_data: CharData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2))
    evaluated = checkpoint.read(str(out_dir)).header.evaluation

    class StoppedStep(step.Step):  # a SIGTERM during the resumed run's first step: saved before it evaluates
        def __call__(self, *args: object) -> object:
            os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(*args)

    monkeypatch.setattr(step, "Step", StoppedStep)
    train.main(tiny_flags(char_data, out_dir, max_iters=8, eval_interval=4, init_from="resume"))
    header = checkpoint.read(str(out_dir)).header
    assert header.iter_num == 3 and evaluated["iter"] == 2 and header.evaluation == evaluated


def test_a_resumed_run_says_where_it_resumed_from(char_data: CharData, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]):
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2))
    capsys.readouterr()
    train.main(tiny_flags(char_data, out_dir, max_iters=3, eval_interval=2, init_from="resume"))
    assert re.search(r"^resumed from .*ckpt\.pt at iter 2 \(best val loss \d+\.\d{4}, the next batch 2\)$",
                     capsys.readouterr().out, re.M)
