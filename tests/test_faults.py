"""Nothing lost: a signal stops training at a step boundary with a checkpoint that resumes exactly, bad settings and
bad files are refused before any training time is spent, and the log's timings stay right around evaluations."""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import configurator
import train
from configurator import UserError
from conftest import REPO_ROOT, CharData, run_main, script_env, tiny_flags


def stopped_at(out: str, signal_name: str) -> int:
    """The iteration the stop line names."""
    stopped = re.search(r"^(\w+): stopped after iter (\d+), saved checkpoint to .*ckpt\.pt; continue with "
                        r"--init_from=resume$", out, re.MULTILINE)
    assert stopped and stopped[1] == signal_name, out[-2000:]
    return int(stopped[2])


def resumes_exactly(char_data: CharData, tmp_path: Path, out_dir: Path, n: int) -> None:
    """The checkpoint in out_dir holds iteration n, and 5 more from it are an unbroken run's iterations n+1..n+5."""
    assert checkpoint.load(str(out_dir))["iter_num"] == n
    resumed = train.main(tiny_flags(char_data, out_dir, max_iters=n + 5, eval_interval=100_000, init_from="resume"))
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=n + 5, eval_interval=100_000))
    assert resumed["train_loss"] == straight["train_loss"][n:]  # the same losses, to the last bit


@pytest.mark.slow
def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact(char_data: CharData, tmp_path: Path):
    # a real process, as a scheduler would send it
    out_dir = tmp_path / "out"
    flags = tiny_flags(char_data, out_dir, max_iters=100_000, eval_interval=100_000)
    run = subprocess.Popen([sys.executable, "train.py", *map(str, flags)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=script_env(PYTHONUNBUFFERED="1"))
    for line in run.stdout:
        if line.startswith("iter 20:"):
            break
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    n = stopped_at(out, "SIGTERM")
    assert n >= 20
    resumes_exactly(char_data, tmp_path, out_dir, n)


def test_ctrl_c_saves_at_the_step_boundary_and_resume_is_exact(char_data: CharData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    # in this process: Ctrl-C arrives during the 7th step
    real_step = train.train_step
    steps = []

    def step(*args: object, **kwargs: object) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        steps.append(1)
        if len(steps) == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", step)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore SIGINT)
    try:
        out_dir = tmp_path / "out"
        history = train.main(tiny_flags(char_data, out_dir, max_iters=100_000, eval_interval=100_000))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(train, "train_step", real_step)
    assert [it for it, _ in history["train_loss"]] == list(range(1, 8))
    assert stopped_at(capsys.readouterr().out, "SIGINT") == 7
    resumes_exactly(char_data, tmp_path, out_dir, 7)


def test_an_ignored_signal_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup, or a background job
    try:
        with train.StopRequest():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_second_ctrl_c_stops_at_once_and_says_so(capsys: pytest.CaptureFixture[str]):
    stop = train.StopRequest()
    stop.handle(signal.SIGINT, None)
    assert stop.signal == "SIGINT"  # the first asks for a stop at the next step boundary
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT, None)

    def interrupted(argv: list[str]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit, match="130"):
        configurator.run(interrupted)
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file", "read_only"])
def test_an_out_dir_that_cannot_hold_checkpoints_is_refused_before_training(char_data: CharData, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          where: str):
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    out_dir = {"is_a_file": tmp_path / "file", "under_a_file": tmp_path / "file" / "out",
               "read_only": tmp_path / "read_only"}[where]
    if where == "read_only":
        out_dir.mkdir(mode=0o555)
        if os.geteuid() == 0:  # root writes through permissions: the file system's refusal is injected instead
            def refused(**kwargs: object) -> None:
                raise PermissionError(13, "Permission denied")
            monkeypatch.setattr(train.tempfile, "NamedTemporaryFile", refused)
    monkeypatch.setattr(train, "start_run", lambda *args: pytest.fail("training started"))
    with pytest.raises(UserError, match=f"out_dir {re.escape(str(out_dir))} cannot hold checkpoints"):
        train.main(tiny_flags(char_data, out_dir))


@pytest.mark.parametrize(("flag", "expected"), [
    ("--learning_rate=-1", "learning_rate must be at least 0, got -1.0"),
    ("--min_lr=-0.1", "min_lr must be at least 0, got -0.1"),
    ("--weight_decay=-1", "weight_decay must be at least 0, got -1.0"),
    ("--grad_clip=-1", "grad_clip must be at least 0, got -1.0"),
    ("--warmup_iters=-5", "warmup_iters must be at least 0, got -5"),
    ("--beta1=1", r"beta1 must be in \[0, 1\), got 1.0"),
    ("--beta2=-0.5", r"beta2 must be in \[0, 1\), got -0.5")])
def test_out_of_range_optimizer_settings_are_one_line(char_data: CharData, tmp_path: Path, flag: str,
                                                      expected: str):
    with pytest.raises(UserError, match=expected):
        train.main([*tiny_flags(char_data, tmp_path / "out"), flag])


def test_one_token_beyond_the_vocabulary_anywhere_is_found_at_start(tmp_path: Path):
    ids = np.zeros(5000, dtype=np.uint16)
    ids[4321] = 9  # far from any batch read first
    ids.tofile(tmp_path / "train.bin")
    with pytest.raises(UserError, match=r"holds token id 9 >= vocab_size 7: it was prepared for another vocabulary"):
        train.Batches(str(tmp_path / "train.bin"), "uint16", 16, 4, 7, seed=0)


def test_a_bin_that_is_not_whole_token_ids_is_refused(tmp_path: Path):
    (tmp_path / "train.bin").write_bytes(b"\0" * 101)
    with pytest.raises(UserError, match="is 101 bytes, not a whole number of uint16 token ids"):
        train.Batches(str(tmp_path / "train.bin"), "uint16", 16, 4, 7, seed=0)


def test_timings_stay_right_when_evaluations_fall_between_logs(char_data: CharData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    # a clock that only training steps (1 s each) and evaluations (100 s each) move: every log must say 1000 ms
    now = [0.0]
    real_step = train.train_step
    real_eval = train.evaluate_and_save

    def step(*args: object, **kwargs: object) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        now[0] += 1.0
        return real_step(*args, **kwargs)

    def evaluate(*args: object) -> None:
        now[0] += 100.0
        real_eval(*args)

    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(train, "train_step", step)
    monkeypatch.setattr(train, "evaluate_and_save", evaluate)
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=12, eval_interval=3, log_interval=2))
    out = capsys.readouterr().out
    timings = re.findall(r"^iter \d+: .*, ([\d.]+) ms/iter", out, re.MULTILINE)
    assert len(timings) == 6 and set(timings) == {"1000.0"}
    assert not re.search("^warning", out, re.MULTILINE)  # a run of CPU size is not warned


@pytest.mark.parametrize("rank", ["0", "1"])
def test_accumulation_that_processes_cannot_share_is_said_once_by_rank_0(char_data: CharData, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str],
                                                                         rank: str):
    # as torchrun starts 2 processes; the check comes before the process group, so nothing waits on a peer
    for key, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(train.dist, "init_process_group", lambda **kwargs: pytest.fail("a process group was made"))
    flags = tiny_flags(char_data, tmp_path / "out", gradient_accumulation_steps=3, backend="gloo")
    if rank == "0":
        with pytest.raises(UserError, match=r"gradient_accumulation_steps \(3\) must be divisible by the number of "
                                            r"processes \(2\)"):
            train.main(flags)
    else:
        assert run_main(train, flags) == (2, "", "")  # silent: rank 0 says it


def test_a_gpu_recipe_on_the_cpu_is_warned_and_the_pace_is_told(char_data: CharData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(train, "CPU_WARNING_FLOPS", 1e6)  # the tiny model stands for GPT-2 124M
    monkeypatch.setattr(train, "EVAL_PROGRESS_S", -1.0)  # and every evaluation batch for a long wait
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=4, eval_iters=2))
    out = capsys.readouterr().out
    assert re.search(r"^warning: [\d.]+ TFLOP per iteration on the CPU: this is a GPU recipe", out, re.MULTILINE)
    # told after the second step: the first one's time holds start-up work
    assert re.search(r"^iter 2: .*\nat this pace the remaining 2 iterations take about \d+ s, evaluations not "
                     r"included$", out, re.MULTILINE)
    assert out.count("at this pace") == 1
    assert "evaluating the train split: batch 2 of 2" in out and "evaluating the val split: batch 1 of 2" in out


def test_durations_read_as_a_person_would():
    assert [train.duration(s) for s in (45, 720, 3.4 * 3600, 2.5 * 86400)] == ["45 s", "12 min", "3.4 h", "2.5 days"]


def train_in_child(flags: list[str]) -> None:
    """The body of a forked child: train as the flags say (its stdout discarded), then exit."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the child ends with the process)
    train.main(flags)


@pytest.mark.slow
def test_training_killed_at_random_moments_always_resumes_to_the_same_model(char_data: CharData, tmp_path: Path):
    # kill -9 a run 20 times, at random moments (some during checkpoint writes: one every other step), resume each
    # time; the checkpoint is never lost or damaged, and the end is bit for bit an unbroken run's. Children are
    # forked from this process, which has torch imported already: a restart costs milliseconds, not seconds.
    out_dir = tmp_path / "out"
    common = {"max_iters": 60, "eval_interval": 2, "eval_iters": 1, "always_save_checkpoint": True}
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    kills = 0
    while kills < 20:
        resume = (out_dir / "ckpt.pt").exists()
        before = checkpoint.load(str(out_dir))["iter_num"] if resume else 0
        child = fork.Process(target=train_in_child, args=(tiny_flags(char_data, out_dir, init_from="resume" if resume
                                                                      else "scratch", **common),))
        child.start()
        child.join(timeout=rng.uniform(0.02, 0.4))
        if child.exitcode is None:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            kills += 1
            if resume:  # the checkpoint is still there and whole, never older than before
                assert checkpoint.load(str(out_dir))["iter_num"] >= before
        elif child.exitcode == 0:  # it finished before the kill: start again, from scratch
            shutil.rmtree(out_dir)
        else:
            pytest.fail(f"the run failed with exit code {child.exitcode}")
    start = "resume" if (out_dir / "ckpt.pt").exists() else "scratch"  # the last kill may have come before any save
    final = train.main(tiny_flags(char_data, out_dir, init_from=start, **common))
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", **common))
    assert final["eval"][-1] == straight["eval"][-1]
    ours = checkpoint.load(str(out_dir))["model"]
    theirs = checkpoint.load(str(tmp_path / "straight"))["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def nan_losses_at(monkeypatch: pytest.MonkeyPatch, steps: set[int] | range) -> None:
    """Make the training loss NaN at these steps (1-based; one micro-step per step), as a diverging run's."""
    real_forward = train.GPT.forward
    calls = []

    def forward(self: train.GPT, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, loss = real_forward(self, *args, **kwargs)
        if self.training and loss is not None:
            calls.append(1)
            if len(calls) in steps:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(train.GPT, "forward", forward)


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_nan_step_is_skipped_and_training_goes_on(char_data: CharData, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str], grad_clip: float):
    nan_losses_at(monkeypatch, {3})
    history = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=8, grad_clip=grad_clip))
    assert "iter 3: 1 update(s) skipped since the last log line: the loss or the gradient norm was NaN or inf" in (
        capsys.readouterr().out)
    losses = dict(history["train_loss"])
    assert math.isnan(losses[3]) and all(math.isfinite(losses[it]) for it in (1, 2, 4, 5, 6, 7, 8))
    ckpt = checkpoint.load(str(tmp_path / "out"))
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())  # the NaN update never reached a weight


def test_a_run_of_nan_steps_stops_training_with_one_line(char_data: CharData, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    nan_losses_at(monkeypatch, range(6, 100))
    out_dir = tmp_path / "out"
    with pytest.raises(UserError, match=r"NaN or inf for 3 steps in a row, up to iter 8: training diverged.*"
                                        r"ckpt\.pt holds the last evaluation's state"):
        train.main(tiny_flags(char_data, out_dir, max_iters=50, eval_interval=4, max_skipped_steps=3))
    ckpt = checkpoint.load(str(out_dir))
    assert ckpt["iter_num"] == 4 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
