"""Two CPU processes under torchrun (gloo) train exactly like one process with the same global batch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import train
from conftest import CharData, make_char_dataset, run_script, script_env, tiny_flags

ITERS = 6


@dataclass
class Runs:
    single: dict[str, list]
    ddp_rc: int
    ddp_out: str
    ddp_err: str
    ddp_dir: Path


def parse_log(out: str) -> tuple[list[tuple[int, float]], list[tuple[int, float, float]]]:
    train_losses = [(int(i), float(v)) for i, v in re.findall(r"^iter (\d+): loss ([\d.]+)", out, re.M)]
    evals = [(int(i), float(t), float(v))
             for i, t, v in re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out, re.M)]
    return train_losses, evals


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("ddp")
    data: CharData = make_char_dataset(root / "data")
    common = {"gradient_accumulation_steps": 2, "dropout": 0.0, "max_iters": ITERS, "eval_interval": 3,
              "eval_iters": 4}
    single = train.main(tiny_flags(data, root / "single", **common))
    rc, out, err = run_script("train.py", [*tiny_flags(data, root / "ddp", **common), "--backend=gloo"],
                              prefix=["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
                              env=script_env(OMP_NUM_THREADS="1"))
    return Runs(single, rc, out, err, root / "ddp")


@pytest.mark.slow
def test_ddp_run_succeeds(runs: Runs):
    assert runs.ddp_rc == 0, runs.ddp_err[-3000:]
    assert "2 process(es)" in runs.ddp_out


@pytest.mark.slow
def test_ddp_train_losses_match_single_process(runs: Runs):
    ddp_losses, _ = parse_log(runs.ddp_out)
    assert [it for it, _ in ddp_losses] == list(range(1, ITERS + 1))  # logged once, by rank 0
    assert [it for it, _ in runs.single["train_loss"]] == list(range(1, ITERS + 1))
    for (_, ours), (_, theirs) in zip(ddp_losses, runs.single["train_loss"]):
        assert ours == pytest.approx(theirs, rel=1e-4)


@pytest.mark.slow
def test_ddp_eval_losses_match_single_process(runs: Runs):
    _, ddp_evals = parse_log(runs.ddp_out)
    assert [e[0] for e in ddp_evals] == [0, 3, 6]
    assert [e[0] for e in runs.single["eval"]] == [0, 3, 6]
    for ours, theirs in zip(ddp_evals, runs.single["eval"]):
        assert ours[1:] == pytest.approx(theirs[1:], rel=1e-4)


@pytest.mark.slow
def test_ddp_checkpoint_has_no_module_prefix(runs: Runs):
    ckpt = torch.load(runs.ddp_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["iter_num"] == ITERS
    assert not [k for k in ckpt["model"] if k.startswith(("module.", "_orig_mod."))]
