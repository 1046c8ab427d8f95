"""FSDP2 and tensor parallelism on CPU processes under torchrun (gloo) train like one process with the same global
batch (Muon too, under DDP and FSDP), and their checkpoints resume exactly on other layouts: one process's ckpt.pt
under FSDP 2; TP 2's ckpt.dcp under FSDP 2 x TP 2 (each process reading its own shards); FSDP's and FSDP x TP's
ckpt.dcp in one process.

The runs are real `python -m torch.distributed.run train.py ...` launches, in two waves (the second resumes what
the first saved), while this process trains the single-process references. Tolerance: the processes add their
partial sums in another order than one process does (rel 1e-4, as in test_ddp). Each launch costs seconds of CPU
(every process imports torch), so there are six, bench.py's among them. What needs no processes (the layout's
checks, the row order, a sharded save in one process) is in test_parallel.py and test_checkpoint.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import checkpoint
import train
from conftest import REPO_ROOT, CharData, make_char_dataset, parse_log, run_main, script_env, tiny_flags

# eval_iters 1: 1 batch for 2 processes, which must still run as many forward passes as each other
COMMON = {"gradient_accumulation_steps": 2, "dropout": 0.0, "eval_interval": 3, "eval_iters": 1, "eval_at_start": True}
# LLaMA's blocks: q/k/v and SwiGLU's stacked matrices, grouped-query heads, rotary positions, RMSNorm, untied head
BENCH = ["--device=cpu", "--dtype=float32", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32",
         "--vocab_size=64", "--batch_size=4", "--gradient_accumulation_steps=2", "--compile=off", "--warmup=1",
         "--iters=2"]
MUON = {"optimizer": "muon", "learning_rate": 3e-3}
LLAMA = {"n_head": 4, "n_kv_head": 2, "mlp": "swiglu", "norm": "rmsnorm", "pos_emb": "rope", "bias": False,
         "tie_embeddings": False}


@dataclass
class Runs:
    data: CharData
    root: Path
    logs: dict[str, tuple[int, str, str]]  # launch name: exit status, stdout, stderr
    single: dict[str, dict[str, list]]  # the single-process references


def launch(nproc: int, flags: list[str], script: str = "train.py") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                             str(REPO_ROOT / script), *flags, "--backend=gloo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=script_env(PYTHONUNBUFFERED="1"))


def finish(procs: dict[str, subprocess.Popen]) -> dict[str, tuple[int, str, str]]:
    outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    return {name: (procs[name].returncode, *outputs[name]) for name in procs}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("sharded")
    data = make_char_dataset(root / "data")

    def flags(out: str, **more: object) -> list[str]:
        return tiny_flags(data, root / out, **COMMON | more)

    train.main(flags("fsdp", max_iters=3))  # one process's ckpt.pt at iter 3, for FSDP to resume
    first = {"fsdp_from_single": launch(2, flags("fsdp", max_iters=6, fsdp=True, init_from="resume")),
             "tp": launch(2, flags("tp", max_iters=6, tensor_parallel=2, **LLAMA)),
             "bench": launch(2, [*BENCH, "--fsdp=True"], script="bench.py"),
             "ddp_muon": launch(2, flags("ddp_muon", max_iters=4, **MUON)),
             "fsdp_muon": launch(2, flags("fsdp_muon", max_iters=4, fsdp=True, **MUON))}
    single = {"gpt2": train.main(flags("single", max_iters=8)),
              "llama": train.main(flags("llama", max_iters=10, **LLAMA)),
              "muon": train.main(flags("muon", max_iters=5, **MUON))}
    logs = finish(first)
    shutil.copytree(root / "tp", root / "tp_at_6", symlinks=True)  # as the first wave left it
    logs |= finish({"fsdp_tp": launch(4, flags("tp", max_iters=8, fsdp=True, tensor_parallel=2, **LLAMA,
                                                activation_checkpointing=True, init_from="resume"))})
    return Runs(data, root, logs, single)


def same_losses(log: tuple[int, str, str], reference: dict[str, list], first: int, last: int,
                rel: float = 1e-4) -> None:
    status, out, err = log
    assert status == 0, err[-3000:]
    losses, evals = parse_log(out)
    assert [i for i, _ in losses] == list(range(first, last + 1)), out[-3000:]
    expected = dict(reference["train_loss"])
    for i, loss in losses:
        assert loss == pytest.approx(expected[i], rel=rel), (i, out[-3000:])
    expected_evals = {i: (t, v) for i, t, v in reference["eval"]}
    compared = [e for e in evals if e[0] in expected_evals]  # a run's last one may fall between the reference's
    assert compared and all(e[1:] == pytest.approx(expected_evals[e[0]], rel=rel) for e in compared), out[-3000:]


# (launch, the one-process run it must match, its first and last iteration, its layout as the log names it):
# FSDP 2 resumes one process's ckpt.pt; TP 2 trains from scratch; FSDP 2 x TP 2 resumes TP 2's ckpt.dcp, each
# process reading its shards of the same tensor-parallel degree, with activation checkpointing (which changes no loss)
LAYOUTS = [("fsdp_from_single", "gpt2", 4, 6, "FSDP 2"), ("tp", "llama", 1, 6, "TP 2"),
           ("fsdp_tp", "llama", 7, 8, "FSDP 2 x TP 2")]


@pytest.mark.slow
@pytest.mark.parametrize(("launch", "single", "first", "last", "layout"), LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_a_sharded_layout_trains_like_one_process(runs: Runs, launch: str, single: str, first: int, last: int,
                                                   layout: str):
    same_losses(runs.logs[launch], runs.single[single], first, last)
    assert f", {layout}, " in runs.logs[launch][1]


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["ddp_muon", "fsdp_muon"])
def test_muon_trains_like_one_process_under_ddp_and_fsdp(runs: Runs, launch: str):
    # each FSDP process orthogonalises the whole gathered matrix, so the update is one process's; the
    # orthogonalisation runs in bfloat16, which turns the processes' other order of summing into a slightly
    # larger difference than AdamW's
    same_losses(runs.logs[launch], runs.single["muon"], 1, 4, rel=1e-3)


@pytest.mark.slow
def test_a_sharded_muon_checkpoint_converts_and_resumes_in_one_process(runs: Runs):
    # the conversion keys the optimizer state by position in Muon's own parameter order
    out = runs.root / "fsdp_muon"
    assert runs.logs["fsdp_muon"][0] == 0, runs.logs["fsdp_muon"][2][-3000:]
    assert run_main("checkpoint.py", [f"--out_dir={out}"])[0] == 0
    resumed = train.main(tiny_flags(runs.data, out, **COMMON | MUON, max_iters=5, init_from="resume"))
    assert resumed["train_loss"] == [(5, pytest.approx(dict(runs.single["muon"]["train_loss"])[5], rel=1e-3))]


@pytest.mark.slow
def test_bench_times_the_sharded_step_under_torchrun(runs: Runs):
    status, out, err = runs.logs["bench"]
    assert status == 0, err[-3000:]
    row = re.search(r"^\| FSDP 2 \| off \| 4 \| ([\d.]+) \| ([\d,]+) \|", out, re.M)  # one table, rank 0's
    assert row and float(row[1]) > 0 and out.count("| layout |") == 1, out[-3000:]
    assert "`torchrun --standalone --nproc_per_node=2 bench.py" in out


@pytest.mark.slow
def test_sharded_checkpoint_is_a_directory_the_links_point_to(runs: Runs):
    out = runs.root / "fsdp"
    assert (out / "ckpt.dcp").is_symlink() and (out / "ckpt.dcp" / checkpoint.HEADER_FILE).is_file()
    assert not (out / "ckpt.pt").exists()  # the single file it resumed from is superseded
    dirs = {p.name for p in out.iterdir() if p.name.startswith("ckpt-")}
    assert dirs == {(out / link).resolve().name for link in ("ckpt.dcp", "best.dcp")}  # the others pruned
    assert checkpoint.read_header(str(out / "ckpt.dcp")).iter_num == 6


def resume_in_one_process(runs: Runs, saved: str, out: Path, reference: str, iters: list[int],
                          **model: object) -> None:
    """Copy a sharded run's out_dir, resume it in this process to iters[-1]: the single-process reference's losses."""
    shutil.copytree(runs.root / saved, out, symlinks=True)
    history = train.main(tiny_flags(runs.data, out, **COMMON, **model, max_iters=iters[-1], init_from="resume"))
    assert [i for i, _ in history["train_loss"]] == iters
    for i, loss in history["train_loss"]:
        assert loss == pytest.approx(dict(runs.single[reference]["train_loss"])[i], rel=1e-4)


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_one_process(runs: Runs, tmp_path: Path):
    resume_in_one_process(runs, "fsdp", tmp_path / "fsdp", "gpt2", [7, 8])  # FSDP's ckpt.dcp at iter 6
    assert (tmp_path / "fsdp" / "ckpt.pt").is_file() and not (tmp_path / "fsdp" / "ckpt.dcp").exists()  # one file


@pytest.mark.slow
def test_fsdp_x_tp_checkpoint_resumes_in_one_process(runs: Runs, tmp_path: Path):
    resume_in_one_process(runs, "tp", tmp_path / "fsdp_tp", "llama", [9, 10], **LLAMA)  # FSDP 2 x TP 2's, iter 8


@pytest.mark.slow
def test_conversion_writes_the_single_files_scripts_read(runs: Runs, tmp_path: Path):
    out = tmp_path / "tp"
    shutil.copytree(runs.root / "tp_at_6", out, symlinks=True)
    sharded = checkpoint.read(str(out))
    assert run_main(checkpoint, [f"--out_dir={out}"])[0] == 0
    single = torch.load(out / "ckpt.pt", weights_only=True)
    assert (out / "best.pt").is_file() and (out / "ckpt.dcp").is_dir()  # the sharded checkpoint is kept
    assert sorted(single["model"]) == sorted(sharded.model)
    assert all(torch.equal(single["model"][k], sharded.model[k]) for k in single["model"])
    assert sorted(single["optimizer"]["state"]) == list(range(len(single["optimizer"]["state"])))
    rc, out_text, _ = run_main("sample.py", [f"--out_dir={out}", "--device=cpu", "--max_new_tokens=5",
                                             "--num_samples=1"])
    assert rc == 0 and out_text.strip()
