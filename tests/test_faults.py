"""Nothing lost: a signal stops training at a step boundary with a checkpoint that resumes exactly, bad settings and
bad files are refused before any training time is spent, and the log's timings stay right around evaluations."""

from __future__ import annotations

import re
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
from conftest import REPO_ROOT, CharData, script_env, tiny_flags


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl_c"])
def test_a_signal_saves_at_the_step_boundary_and_resume_is_exact(char_data: CharData, tmp_path: Path,
                                                                  sig: signal.Signals):
    out_dir = tmp_path / "out"
    flags = tiny_flags(char_data, out_dir, max_iters=100_000, eval_interval=100_000)
    run = subprocess.Popen([sys.executable, "train.py", *map(str, flags)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=script_env(PYTHONUNBUFFERED="1"))
    for line in run.stdout:
        if line.startswith("iter 20:"):
            break
    run.send_signal(sig)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    stopped = re.search(r"^(\w+): stopped after iter (\d+), saved checkpoint to .*ckpt\.pt; continue with "
                        r"--init_from=resume$", out, re.MULTILINE)
    assert stopped and stopped[1] == sig.name, out[-2000:]
    n = int(stopped[2])
    assert n >= 20 and checkpoint.load(str(out_dir))["iter_num"] == n
    resumed = train.main(tiny_flags(char_data, out_dir, max_iters=n + 5, eval_interval=100_000, init_from="resume"))
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=n + 5, eval_interval=100_000))
    assert resumed["train_loss"] == straight["train_loss"][n:]  # the same losses, to the last bit


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


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_an_out_dir_that_cannot_hold_checkpoints_is_refused_before_training(char_data: CharData, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          where: str):
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    out_dir = tmp_path / "file" if where == "is_a_file" else tmp_path / "file" / "out"
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
    timings = re.findall(r"^iter \d+: .*, ([\d.]+) ms/iter", capsys.readouterr().out, re.MULTILINE)
    assert len(timings) == 6 and set(timings) == {"1000.0"}
