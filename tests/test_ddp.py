"""Two CPU processes under torchrun (gloo) train exactly like one process with the same global batch, even split
into other micro-batches; SIGTERM to torchrun stops them at a step boundary with a checkpoint that resumes (in one
process, with its own micro-batch); a setting they cannot share is one line.

The run is real: `python -m torch.distributed.run --nproc_per_node=2 train.py ...`, stopped as a scheduler
stops it, by SIGTERM to torchrun (which passes it on to its workers); and a run whose torchrun is killed outright
stops in the same way, its workers told by Linux that their launcher died."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import torch

import metrics
import train
from conftest import REPO_ROOT, CharData, make_char_dataset, parse_log, script_env, tiny_flags

ITERS = 6  # compared with one process; the run goes on until SIGTERM, at least this far
COMMON = {"gradient_accumulation_steps": 2, "dropout": 0.0, "eval_interval": 3, "eval_iters": 4, "eval_at_start": True}


@dataclass
class Runs:
    data: CharData
    single: dict[str, list]
    ddp_out: str
    ddp_err: str
    ddp_dir: Path
    refused: tuple[int, str]  # gradient_accumulation_steps=3 over 2 processes: exit status, stderr
    no_out_dir: tuple[int, str]  # an out_dir under a file, which only rank 0 writes to: exit status, stderr
    save_fails: tuple[int, str]  # rank 0's first checkpoint write fails (ckpt.pt is a folder): exit status, stderr
    orphaned: tuple[int, str, Path]  # a run whose torchrun was killed with SIGKILL: its status, all output, out_dir


def torchrun(flags: list[str], stderr: int | IO[str] = subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(REPO_ROOT / "train.py"), *flags, "--backend=gloo"], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=script_env(PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("ddp")
    data: CharData = make_char_dataset(root / "data")
    ddp_err = root / "ddp_stderr.txt"
    with ddp_err.open("w", encoding="utf-8") as err_file:  # a file: nothing waits on a full pipe while stdout is read
        # each process's 8 sequences a step in micro-batches of 2, strided over the ranks: the comparisons with
        # one process (8 at once) check that they cover exactly its sequences
        ddp = torchrun(tiny_flags(data, root / "ddp", **COMMON, max_iters=100_000, micro_batch=2), stderr=err_file)
    refused = torchrun(tiny_flags(data, root / "refused", **COMMON | {"gradient_accumulation_steps": 3}))
    (root / "a_file").write_text("not a folder", encoding="utf-8")
    no_out_dir = torchrun(tiny_flags(data, root / "a_file" / "out", **COMMON))
    (root / "blocked" / "ckpt.pt").mkdir(parents=True)  # rank 0's save cannot rename its file over a folder
    save_fails = torchrun(tiny_flags(data, root / "blocked", **COMMON, max_iters=6, overwrite=True))
    # its workers outlive it unless they stop by themselves; max_iters bounds a run that never hears of the kill
    orphaned = torchrun(tiny_flags(data, root / "orphaned", gradient_accumulation_steps=2, max_iters=3000),
                        stderr=subprocess.STDOUT)
    orphaned_out: list[str] = []
    killer = threading.Thread(target=kill_at_iter_3, args=(orphaned, orphaned_out))  # at once, not after the rest
    killer.start()
    single = train.main(tiny_flags(data, root / "single", **COMMON, max_iters=ITERS))
    hung = threading.Timer(300, ddp.kill)  # a run that never stops fails the tests instead of hanging them
    hung.start()
    try:
        head = []
        for line in ddp.stdout:
            head.append(line)
            if line.startswith(f"iter {ITERS + 1}:"):  # after the evaluation at ITERS
                break
        ddp.send_signal(signal.SIGTERM)
        out = "".join(head) + ddp.stdout.read()  # the same file object: the lines it read ahead are not lost
        ddp.wait()
    finally:
        hung.cancel()
    _, refused_err = refused.communicate(timeout=120)
    _, no_out_dir_err = no_out_dir.communicate(timeout=120)
    _, save_fails_err = save_fails.communicate(timeout=120)  # a hang would end here, failing the test
    killer.join()
    return Runs(data, single, out, ddp_err.read_text(encoding="utf-8"), root / "ddp",
                (refused.returncode, refused_err), (no_out_dir.returncode, no_out_dir_err),
                (save_fails.returncode, save_fails_err),
                (orphaned.returncode, "".join(orphaned_out), root / "orphaned"))


def kill_at_iter_3(run: subprocess.Popen, out: list[str]) -> None:
    """SIGKILL torchrun once iteration 3 is logged, then read the output to its end: the workers inherited the
    pipe, so its end is the last of them gone."""
    for line in run.stdout:
        out.append(line)
        if line.startswith("iter 3:"):
            break
    run.kill()  # torchrun cannot pass a signal on
    run.wait()
    out.append(run.stdout.read())


def stopped_at(out: str) -> int:
    stop = re.search(r"^SIGTERM: stopped after iter (\d+), saved checkpoint to .*ckpt\.pt", out, re.M)
    assert stop, out[-3000:]
    return int(stop[1])


@pytest.mark.slow
def test_ddp_run_stops_on_sigterm_at_a_step_boundary(runs: Runs):
    assert re.search(r"^[\d.]+M parameters .*, DDP 2, 512 tokens per iteration$", runs.ddp_out, re.M)
    assert "ChildFailedError" not in runs.ddp_err, runs.ddp_err[-3000:]  # every worker left with status 0
    n = stopped_at(runs.ddp_out)
    assert n > ITERS
    assert parse_log(runs.ddp_out)[0][-1][0] == n  # the last step logged is the one saved


@pytest.mark.slow
def test_workers_stop_and_save_when_torchrun_is_killed(runs: Runs):
    status, out, out_dir = runs.orphaned
    assert status == -signal.SIGKILL
    n = stopped_at(out)  # each worker was asked to stop, as by a SIGTERM, and rank 0 saved where they stopped
    assert 3 <= n < 3000, out[-3000:]
    assert torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=True)["iter_num"] == n


@pytest.mark.slow
def test_ddp_train_losses_match_single_process(runs: Runs):
    ddp_losses, _ = parse_log(runs.ddp_out)
    assert [it for it, _ in ddp_losses] == list(range(1, len(ddp_losses) + 1))  # logged once, by rank 0
    for (_, ours), (_, theirs) in zip(ddp_losses[:ITERS], runs.single["train_loss"][:ITERS], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-4)


@pytest.mark.slow
def test_ddp_eval_losses_match_single_process(runs: Runs):
    ddp_evals = [e for e in parse_log(runs.ddp_out)[1] if e[0] <= ITERS]
    single_evals = [e for e in runs.single["eval"] if e[0] <= ITERS]
    assert [e[0] for e in ddp_evals] == [e[0] for e in single_evals] == [0, 3, 6]
    for ours, theirs in zip(ddp_evals, single_evals, strict=True):
        assert ours[1:] == pytest.approx(theirs[1:], rel=1e-4)


@pytest.mark.slow
def test_only_rank_0_writes_the_metrics_log(runs: Runs):
    ddp_losses, ddp_evals = parse_log(runs.ddp_out)
    log = metrics.read(str(runs.ddp_dir))
    train_rows = [r for r in log if r["kind"] == "train"]
    assert [r["iter"] for r in train_rows] == [it for it, _ in ddp_losses]  # each once, as logged
    assert [r["loss"] for r in train_rows] == pytest.approx([loss for _, loss in ddp_losses], abs=5e-5)
    assert [r["iter"] for r in log if r["kind"] == "eval"] == [e[0] for e in ddp_evals]


@pytest.mark.slow
def test_ddp_checkpoint_has_no_module_prefix(runs: Runs):
    ckpt = torch.load(runs.ddp_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["iter_num"] == stopped_at(runs.ddp_out)
    assert not [k for k in ckpt["model"] if k.startswith(("module.", "_orig_mod."))]


@pytest.mark.slow
def test_the_checkpoint_saved_on_sigterm_resumes_where_one_process_would_be(runs: Runs):
    n = stopped_at(runs.ddp_out)
    resumed = train.main(tiny_flags(runs.data, runs.ddp_dir, **COMMON, max_iters=n + 2, init_from="resume"))
    straight = train.main(tiny_flags(runs.data, runs.ddp_dir.parent / "straight", **COMMON, max_iters=n + 2))
    assert [it for it, _ in resumed["train_loss"]] == [n + 1, n + 2]
    for (_, ours), (_, theirs) in zip(resumed["train_loss"], straight["train_loss"][n:], strict=True):
        # one process and two sum gradients in another order, a difference that grows with the iterations before
        # the stop, which a loaded machine makes more of
        assert ours == pytest.approx(theirs, rel=1e-3)


def ours(err: str) -> list[str]:
    """What the workers wrote: stderr without torchrun's notices and without its report of the failed workers
    (from its own traceback on), which a worker's exit status 2 brings."""
    mine = err.split("Traceback (most recent call last)", maxsplit=1)[0] if "ChildFailedError" in err else err
    return [line for line in mine.splitlines() if not re.match(r"[WE]\d{4} ", line)]


def refused(status: int, err: str) -> None:
    """torchrun's status is the workers' 2 (it answers with 1), and no worker printed a traceback."""
    assert status != 0, err[-3000:]
    assert not re.search(r'File ".*/(train|parallel|checkpoint|configurator)\.py"', err), err[-3000:]


@pytest.mark.slow
def test_accumulation_the_processes_cannot_share_is_one_line_and_no_traceback(runs: Runs):
    status, err = runs.refused
    refused(status, err)
    assert ours(err) == ["error: gradient_accumulation_steps (3) must be divisible by the number of processes (2)"]


@pytest.mark.slow
def test_what_only_rank_0_checks_stops_every_process_with_one_line(runs: Runs):
    # the others learn rank 0's answer: none of them goes on to wait for it, or fails in its place
    status, err = runs.no_out_dir
    refused(status, err)
    assert len(ours(err)) == 1 and re.fullmatch(r"error: out_dir .*a_file/out cannot hold checkpoints: .*",
                                                 ours(err)[0]), err[-3000:]


@pytest.mark.slow
def test_a_checkpoint_write_that_fails_on_rank_0_stops_every_process(runs: Runs):
    status, err = runs.save_fails
    refused(status, err)
    assert len(ours(err)) == 1 and re.fullmatch(r"error: could not write a checkpoint to .*blocked/ckpt\.pt \(.*\); .*",
                                                 ours(err)[0]), err[-3000:]
