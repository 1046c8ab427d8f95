"""Nothing lost when a run goes wrong: a signal stops training at a step boundary with a checkpoint that resumes
exactly, a kill at any moment never damages the checkpoint, an out_dir that cannot hold checkpoints is refused
before training, and NaN or inf updates are skipped (a run of them stops training in one line)."""

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

import pytest
import torch

import checkpoint
import step
import train
from configurator import UserError
from conftest import REPO_ROOT, CharData, script_env, tiny_flags


def stopped_at(out: str, signal_name: str) -> int:
    """The iteration the stop line names."""
    stopped = re.search(r"^(\w+): stopped after iter (\d+), saved checkpoint to .*ckpt\.pt; continue with "
                        r"--init_from=resume$", out, re.MULTILINE)
    assert stopped and stopped[1] == signal_name, out[-2000:]
    return int(stopped[2])


def resumes_exactly(char_data: CharData, tmp_path: Path, out_dir: Path, n: int) -> None:
    """The checkpoint in out_dir holds iteration n, and 5 more from it are an unbroken run's iterations n+1..n+5."""
    assert checkpoint.read(str(out_dir)).header.iter_num == n
    resumed = train.main(tiny_flags(char_data, out_dir, max_iters=n + 5, eval_interval=100_000, init_from="resume"))
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=n + 5, eval_interval=100_000))
    assert resumed["train_loss"] == straight["train_loss"][n:]  # the same losses, to the last bit


@pytest.mark.slow
def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact_even_without_stdout(char_data: CharData,
                                                                                    tmp_path: Path):
    # a real process, as a scheduler would send it; its stdout's reader gone first, as `| tee` is when the
    # terminal's Ctrl-C ends it too: the run goes on to its checkpoint, and its last lines go to stderr
    out_dir = tmp_path / "out"
    flags = tiny_flags(char_data, out_dir, max_iters=100_000, eval_interval=100_000)
    run = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *map(str, flags)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=script_env(PYTHONUNBUFFERED="1"))
    for line in run.stdout:
        if line.startswith("iter 20:"):
            break
    run.stdout.close()
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0 and "Traceback" not in err, err[-3000:]
    n = stopped_at(err, "SIGTERM")
    assert n >= 20
    resumes_exactly(char_data, tmp_path, out_dir, n)


def test_ctrl_c_saves_at_the_step_boundary_and_resume_is_exact(char_data: CharData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    # in this process: Ctrl-C arrives during the 7th step
    steps = []

    class InterruptedStep(step.Step):
        def __call__(self, *args: object) -> object:
            steps.append(1)
            if len(steps) == 7:
                os.kill(os.getpid(), signal.SIGINT)
            return super().__call__(*args)

    monkeypatch.setattr(step, "Step", InterruptedStep)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore SIGINT)
    try:
        out_dir = tmp_path / "out"
        history = train.main(tiny_flags(char_data, out_dir, max_iters=100_000, eval_interval=100_000))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    finally:
        signal.signal(signal.SIGINT, before)
    assert [it for it, _ in history["train_loss"]] == list(range(1, 8))
    assert stopped_at(capsys.readouterr().out, "SIGINT") == 7
    resumes_exactly(char_data, tmp_path, out_dir, 7)


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
            monkeypatch.setattr(checkpoint.tempfile, "NamedTemporaryFile", refused)
    monkeypatch.setattr(train, "start_run", lambda *args: pytest.fail("training started"))
    with pytest.raises(UserError, match=f"out_dir {re.escape(str(out_dir))} cannot hold checkpoints"):
        train.main(tiny_flags(char_data, out_dir))


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
        before = checkpoint.read(str(out_dir)).header.iter_num if resume else 0
        child = fork.Process(target=train_in_child, args=(tiny_flags(char_data, out_dir, init_from="resume" if resume
                                                                      else "scratch", **common),))
        child.start()
        child.join(timeout=rng.uniform(0.02, 0.4))
        if child.exitcode is None:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            kills += 1
            if resume:  # the checkpoint is still there and whole, never older than before
                assert checkpoint.read(str(out_dir)).header.iter_num >= before
        elif child.exitcode == 0:  # it finished before the kill: start again, from scratch
            shutil.rmtree(out_dir)
        else:
            pytest.fail(f"the run failed with exit code {child.exitcode}")
    start = "resume" if (out_dir / "ckpt.pt").exists() else "scratch"  # the last kill may have come before any save
    final = train.main(tiny_flags(char_data, out_dir, init_from=start, **common))
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", **common))
    assert final["eval"][-1] == straight["eval"][-1]
    ours = checkpoint.read(str(out_dir)).model
    theirs = checkpoint.read(str(tmp_path / "straight")).model
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
    ckpt = checkpoint.read(str(tmp_path / "out"))
    assert all(torch.isfinite(t).all() for t in ckpt.model.values())  # the NaN update never reached a weight


def test_a_run_of_nan_steps_stops_training_with_one_line(char_data: CharData, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    nan_losses_at(monkeypatch, range(6, 100))
    out_dir = tmp_path / "out"
    with pytest.raises(UserError, match=r"NaN or inf for 3 steps in a row, up to iter 8: training diverged.*"
                                        r"ckpt\.pt holds the last evaluation's state"):
        train.main(tiny_flags(char_data, out_dir, max_iters=50, eval_interval=4, max_skipped_steps=3))
    ckpt = checkpoint.read(str(out_dir))
    assert ckpt.header.iter_num == 4 and all(torch.isfinite(t).all() for t in ckpt.model.values())


def test_a_diverged_model_is_never_saved_over_a_good_checkpoint(char_data: CharData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=4, eval_interval=4))
    good = (out_dir / "ckpt.pt").read_bytes()
    evaluate_for_real = train.estimate_loss

    def diverged(*args: object, **kwargs: object) -> dict[str, float]:  # the weights as a diverged run leaves them
        return {split: float("nan") for split in evaluate_for_real(*args, **kwargs)}

    monkeypatch.setattr(train, "estimate_loss", diverged)
    with pytest.raises(UserError, match=r"^the val loss is nan at iter 4: the model has diverged; not saving it "
                                        r"\(the last good checkpoint in .* stays\): lower learning_rate$"):
        train.main(tiny_flags(char_data, out_dir, max_iters=8, eval_interval=4, init_from="resume",
                              always_save_checkpoint=True))
    assert (out_dir / "ckpt.pt").read_bytes() == good


def lock_holder(out_dir: Path) -> subprocess.Popen:
    """A run's lock on out_dir as process.hold takes it, held by a real process until killed, its lock file saying
    'pid PID on a host: a run'; returned once held."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"  # without torch: a second to start, not five
                               "f = open(os.path.join(sys.argv[1], '.lock'), 'a+')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                               "f.truncate(0); f.write(f'pid {os.getpid()} on a host: a run'); f.flush()\n"
                               "print('held', flush=True)\ntime.sleep(600)", str(out_dir)],
        env=script_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_run_in_the_same_out_dir_is_refused_until_the_first_ends_even_by_a_kill(char_data: CharData,
                                                                                         tmp_path: Path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    holder = lock_holder(out_dir)
    try:
        with pytest.raises(UserError, match=rf"^out_dir {re.escape(str(out_dir))} is in use by another run \(pid "
                                            rf"{holder.pid} on a host: a run\): wait for it to end, or choose "
                                            r"another out_dir$"):
            train.main(tiny_flags(char_data, out_dir))
        assert not checkpoint.present(str(out_dir))
    finally:
        holder.kill()
        holder.wait()
    assert len(train.main(tiny_flags(char_data, out_dir))["train_loss"]) == 4  # the kill released the lock


def test_a_checkpoint_read_mid_write_by_another_run_is_not_called_corrupt(char_data: CharData, tmp_path: Path):
    # a resume while another run holds out_dir reads a checkpoint that run is replacing: here, half a file
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2))
    whole = (out_dir / "ckpt.pt").read_bytes()
    (out_dir / "ckpt.pt").write_bytes(whole[: len(whole) // 2])
    holder = lock_holder(out_dir)
    try:
        with pytest.raises(UserError, match=rf"^out_dir {re.escape(str(out_dir))} is in use by another run \(pid "
                                            rf"{holder.pid} on a host: a run\), which was writing its checkpoints "
                                            r"as they were read: wait for it to end, or choose another out_dir$"):
            train.main(tiny_flags(char_data, out_dir, max_iters=4, init_from="resume"))
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(UserError, match=r"ckpt\.pt is corrupt or truncated"):  # held by none: damaged, and said so
        train.main(tiny_flags(char_data, out_dir, max_iters=4, init_from="resume"))


def test_a_run_from_scratch_does_not_replace_checkpoints_unless_told_to(char_data: CharData, tmp_path: Path):
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2))
    before = (out_dir / "ckpt.pt").read_bytes()
    holder = (out_dir / ".lock").read_text(encoding="utf-8")  # what a second run's refusal would quote
    assert re.fullmatch(rf"pid {os.getpid()} on .+ since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d: .+\n", holder), holder
    with pytest.raises(UserError, match=r"already holds checkpoints \(ckpt\.pt, best\.pt\): continue them with "
                                        r"--init_from=resume, choose another out_dir, or replace them with "
                                        r"--overwrite=True$"):
        train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2))
    assert (out_dir / "ckpt.pt").read_bytes() == before
    train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2, overwrite=True, seed=7))
    assert (out_dir / "ckpt.pt").read_bytes() != before


def test_resuming_where_only_the_best_checkpoint_is_left_says_how_to_go_on(char_data: CharData, tmp_path: Path):
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2))
    (out_dir / "ckpt.pt").unlink()
    with pytest.raises(UserError, match=r"^no latest checkpoint in .*, only best\.pt: to continue from it, copy it "
                                        r"to ckpt\.pt \(cp -P .*best\.pt .*ckpt\.pt\) and resume$"):
        train.main(tiny_flags(char_data, out_dir, max_iters=4, init_from="resume"))
    shutil.copy(out_dir / "best.pt", out_dir / "ckpt.pt")  # as the line says
    assert len(train.main(tiny_flags(char_data, out_dir, max_iters=4, init_from="resume"))["train_loss"]) == 2


def test_a_run_removes_what_killed_writers_left_in_its_out_dir(char_data: CharData, tmp_path: Path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)  # a process that has ended: its pid names no running writer
    left = [f"ckpt.pt.tmp.{dead_pid}", f"best.pt.tmp.{dead_pid}", f".ckpt.dcp.{dead_pid}",
            f".write-test-{dead_pid}-x1y2", f"metrics.jsonl.tmp.{dead_pid}"]
    for name in left:
        (out_dir / name).write_bytes(b"partial")
    (out_dir / "ckpt-8-0123abcd.tmp").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    alive = [f"ckpt.pt.tmp.{writer.pid}", f"metrics.jsonl.tmp.{writer.pid}", f".write-test-{writer.pid}-x1y2"]
    for name in alive:  # a writer still running (a conversion, another run's first moments) keeps its files
        (out_dir / name).write_bytes(b"being written")
    (out_dir / "notes.txt").write_text("the user's own file", encoding="utf-8")
    try:
        train.main(tiny_flags(char_data, out_dir, max_iters=2, eval_interval=2))
    finally:
        writer.kill()
        writer.wait()
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([".lock", *alive, "best.pt", "ckpt.pt",
                                                                "metrics.jsonl", "notes.txt"])


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # a second Ctrl-C while the stop's checkpoint is written: the file is finished, then the interrupt is taken
    real_save = checkpoint.torch.save
    written = []

    def save_meeting_ctrl_c(obj: object, f: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the write
        real_save(obj, f)
        written.append(True)

    monkeypatch.setattr(checkpoint.torch, "save", save_meeting_ctrl_c)
    model = torch.nn.Linear(2, 2)
    ckpt = checkpoint.Checkpoint("", checkpoint.Header({}, 7), model.state_dict())
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(ckpt, str(tmp_path))
    finally:
        signal.signal(signal.SIGINT, before)
    assert written == [True]
    assert checkpoint.read(str(tmp_path)).header.iter_num == 7  # whole, under its final name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
