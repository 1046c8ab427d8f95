"""A run's record: out_dir/metrics.jsonl, one JSON object per log line and per evaluation of train.py, and a
command that draws the losses of one or several runs against iterations, tokens or wall seconds.

    python metrics.py --runs=out-a,out-b --x=tokens --out=curves.png   # needs matplotlib
    python metrics.py --runs=out-a,out-b --x=iter,seconds                # side by side, into out-a/curves.png
    python metrics.py --runs=adamw=out-a1+out-a2+out-a3,muon=out-m1+out-m2+out-m3 --steps=100,200 --target=3.5
        # per recipe over its seeds: val loss and bits per byte at those steps, steps and seconds to the target
        # (mean ± standard deviation), and the curves as a mean with a band from the lowest seed to the highest

Rows: {"kind": "train", "iter", "tokens", "seconds", "loss", "lr", "ms_per_iter", "tok_per_s", "mfu",
"peak_mem_gib"}, {"kind": "eval", "iter", "tokens", "seconds", "train_loss", "val_loss", "val_bpb"} and, with
sample_interval, {"kind": "sample", "iter", "seconds", "prompt", "greedy", "sampled"}; mfu, memory and bits per
byte only where they are known. "seconds" is wall time from the first launch, summed over resumes (the time
between a stop and the resume not counted). A resumed run first drops what came after its checkpoint (those
iterations are run again), so the log has neither a gap nor a duplicate; a run from scratch starts a new log.
Only rank 0 writes.

The Record is that record as a run keeps it: the lines train.py prints (each step's loss, speed and ETA, each
evaluation, the samples, the target reached), the rows of metrics.jsonl and of wandb, from one owner.
"""

from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
import contextlib
import functools
import importlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

import configurator
import process
import runtime
from configurator import UserError
from parallel import Layout

METRICS_FILE = "metrics.jsonl"
TEMPORARY = r"metrics\.jsonl\.tmp\.(\d+)"  # MetricsLog's replacement in the making, its writer's pid in group 1
QUIET_S = 10.0  # a log line at least this often, whatever log_interval says: a slow machine must not look hung
CPU_WARNING_FLOPS = 1e12  # training FLOPs per iteration above which a CPU run is warned that it is a GPU recipe
CPU_FLOPS = 1e11  # a typical CPU's FLOP/s in float32 training, for that warning's estimate
X_AXES = {"iter": "iteration", "tokens": "tokens", "seconds": "wall seconds"}


def read(out_dir: str) -> list[dict[str, Any]]:
    """The rows of out_dir's metrics log; a last line cut short by a kill is left out."""
    path = os.path.join(out_dir, METRICS_FILE)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a metrics log: byte {e.start} is not UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    for n, line in enumerate(lines):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if n == len(lines) - 1:  # written when the process was killed: the rest of the log is whole
                continue
            raise UserError(f"{path} line {n + 1} is not JSON: the file is not a metrics log") from None
        numbers = isinstance(row, dict) and isinstance(row.get("iter"), int) and \
            isinstance(row.get("seconds"), (int, float)) and not isinstance(row.get("seconds"), bool)
        if not numbers or row.get("kind") not in ("train", "eval", "sample"):
            raise UserError(f"{path} line {n + 1} is not a metrics row (a kind, a whole iter and seconds): move "
                            "the file aside to start a new log")
        rows.append(row)
    return rows


def resumed_rows(rows: list[dict[str, Any]], start: int, reevaluates: bool) -> list[dict[str, Any]]:
    """The rows a run resumed at iteration `start` keeps: those before it, and at it the train row and, unless the
    resumed run evaluates there again, the eval and sample rows."""
    return [row for row in rows if row["iter"] < start or (
        row["iter"] == start and not (row["kind"] != "train" and reevaluates))]


class MetricsLog:
    """out_dir/metrics.jsonl for the run starting at iteration `start` (0: from scratch, a new log; else a resume
    from a checkpoint at that iteration, which then evaluates again if `reevaluates`)."""

    def __init__(self, out_dir: str, start: int, reevaluates: bool) -> None:
        self.path = os.path.join(out_dir, METRICS_FILE)
        kept = resumed_rows(read(out_dir), start, reevaluates) if start else []
        self.offset = max((row["seconds"] for row in kept), default=0.0)  # the earlier launches' wall time
        tmp = f"{self.path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:  # replaced whole: a kill leaves the old log or the new one
                f.writelines(json.dumps(row) + "\n" for row in kept)
            os.replace(tmp, self.path)
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run's life; close())
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None

    def write(self, kind: str, seconds: float, **values: Any) -> None:
        """One row; seconds: wall time since this launch. A value of None is left out, a non-finite float is
        written as a string ('nan', 'inf'): JSON has no such numbers. A row that cannot be written (a full disk)
        stops the run in one line, as a checkpoint that cannot be: a cut row is the log's last line, which the
        next reader leaves out."""
        row = {"kind": kind, **{k: v for k, v in values.items() if v is not None},
               "seconds": round(self.offset + seconds, 3)}
        row = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror or e}; the run stops (its last checkpoint "
                            "stays: resume from it once there is room)") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk said so already, where the row was written
            self.file.close()


# ----------------------------------------------------------------------------------------------------------------
# the run's record as train.py keeps it: printed lines, metrics.jsonl rows, wandb


def provenance(device: torch.device) -> dict[str, str]:
    """Where a run's numbers come from: the code's git commit (with "+changes" when the working tree differs
    from it; "unknown" outside a git checkout), torch's and Python's versions, the device, the command line."""
    return {"code": code_version(), "torch": str(torch.__version__), "python": platform.python_version(),
            "device": runtime.device_name(device),
            "command": shlex.join([sys.executable.rsplit(os.sep, 1)[-1], *sys.argv])}


@functools.cache  # once a process: the code does not change while it runs
def code_version() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (a copy of the files)
        return "unknown"
    return commit + ("+changes" if changed else "")


def duration(seconds: float) -> str:
    """A rough human reading of a duration: '45 s', '12 min', '3.4 h', '2.1 days'."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def peak_memory(device: torch.device) -> str:
    """', peak memory N GiB' on a GPU (rank 0's: under FSDP or tensor parallelism the others' are alike)."""
    if device.type != "cuda":
        return ""
    return f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def cpu_warning(flops_per_iter: float, device: torch.device) -> str | None:
    """A config made for GPUs (config/train_gpt2.py) on a CPU: a warning, to print before minutes of compiling and
    hours per evaluation, rather than leaving the user to wonder."""
    if device.type != "cpu" or flops_per_iter <= CPU_WARNING_FLOPS:
        return None
    return (f"warning: {flops_per_iter / 1e12:,.1f} TFLOP per iteration on the CPU: this is a GPU recipe; at the 0.1 "
            f"TFLOP/s of a typical CPU an iteration takes about {duration(flops_per_iter / CPU_FLOPS)} (the first "
            "log line says how long max_iters would take)")


class Pace:
    """The time per iteration between log lines: the steps since the last restart. Steady: those steps ran at
    their lasting speed (not the first steps of the run, which hold start-up work, nor a CUDA graph's warm-up and
    capture); the first steady interval also says how long the rest of the run will take, and from then on every
    log line its ETA: the wall time per iteration since then, evaluations and checkpoints included."""

    def __init__(self) -> None:
        self.restart(steady=False)
        self.shown = False
        self.anchor: tuple[float, int] | None = None  # (time, iteration) where the first steady interval began
        self.next_line: int | None = None  # several processes: the iteration of the next line, agreed (plan);
        # None before the first, which comes after the first step

    def restart(self, steady: bool) -> None:
        self.since = time.perf_counter()
        self.iters = 0
        self.steady = steady

    def tick(self) -> None:
        self.iters += 1

    def seconds_per_iter(self) -> float:  # only when read: a CUDA graph's steps are queued in microseconds
        return (time.perf_counter() - self.since) / self.iters

    def overdue(self, iter_num: int, distributed: bool) -> bool:
        """Whether a log line is due by time: QUIET_S since the last line (or evaluation). Processes' clocks differ,
        and a line is a collective step, so several processes keep to the iteration they agreed at the last line."""
        if distributed:
            return self.next_line is None or iter_num >= self.next_line
        return time.perf_counter() - self.since >= QUIET_S

    def plan(self, iter_num: int, log_interval: int, seconds_per_iter: float, device: torch.device) -> None:
        """Several processes, at a log line: agree on the iteration of the next, within QUIET_S at the slowest
        process's pace (and never later than log_interval says)."""
        steps = max(1, min(log_interval, int(QUIET_S / max(seconds_per_iter, 1e-9))))
        agreed = torch.tensor(steps, device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        self.next_line = iter_num + int(agreed.item())

    def eta(self, iter_num: int, max_iters: int) -> float | None:
        """Seconds until max_iters at the pace since the first steady interval began; None before it ends."""
        if self.anchor is None:
            if self.steady:
                self.anchor = (self.since, iter_num - self.iters)
            return None
        began, first = self.anchor
        return (time.perf_counter() - began) / (iter_num - first) * (max_iters - iter_num)


@dataclass
class Record:
    """A training run's record, kept by every process (a log line is a collective step: the mean loss over the
    processes, the iteration of the next line) and written by rank 0 alone: the printed lines, out_dir/metrics.jsonl
    (open) and wandb (start_wandb). `launched`: when the run began, a perf_counter reading."""

    layout: Layout
    tokens_per_iter: int  # over every process
    max_iters: int
    log_interval: int
    launched: float = field(default_factory=time.perf_counter)
    mfu_of: Callable[[int, float], float | None] = lambda tokens, seconds: None  # the model's FLOPs utilisation
    # at `tokens` per process an iteration of `seconds`: a fraction, or None where the peak is unknown
    pace: Pace = field(default_factory=Pace)
    log: MetricsLog | None = None
    wandb: Any = None  # the wandb module, once a run is started in it

    def seconds(self) -> float:
        return time.perf_counter() - self.launched

    def begin(self, held: contextlib.ExitStack, notes: list[str], size: str, dtype: torch.dtype, layout: str,
              out_dir: str | None, start: int, reevaluates: bool, wandb: dict[str, Any] | None) -> None:
        """Rank 0, as training begins: where its numbers come from (provenance), the notes (where a resumed run
        starts), and the run's size, device, dtype, layout (in words) and tokens per iteration; out_dir's
        metrics.jsonl opened for the run starting at iteration `start` (MetricsLog; out_dir None: evaluating
        only), and a wandb run started (wandb: its project, name and config), both for the run's life: `held`
        closes them."""
        print("run: " + ", ".join(f"{k} {v}" for k, v in provenance(self.layout.device).items()))
        for note in notes:
            print(note)
        print(f"\n{size}, device {self.layout.device}, {dtype}, {layout}, {self.tokens_per_iter:,} tokens per "
              "iteration")
        if out_dir is not None:
            self.log = held.enter_context(contextlib.closing(MetricsLog(out_dir, start, reevaluates)))
        if wandb is not None:
            self.wandb = importlib.import_module("wandb")
            self.wandb.init(**wandb)
            held.push(lambda failed, *_: self.wandb.finish(exit_code=1 if failed else 0))  # a crash is a failed run

    def due(self, iter_num: int) -> bool:
        """Whether iteration iter_num, just taken, gets a log line: every log_interval, and at least every
        QUIET_S."""
        return iter_num % self.log_interval == 0 or self.pace.overdue(iter_num, self.layout.distributed)

    def step(self, iter_num: int, loss_sum: torch.Tensor, lr: float) -> float:
        """A step's line: the mean training loss of the step over all processes (returned), the learning rate, the
        speed since the last line, MFU, memory, and once steady the ETA; its row in metrics.jsonl."""
        layout, pace = self.layout, self.pace
        if layout.distributed:
            dist.all_reduce(loss_sum)  # gloo has no AVG: sum, then divide
        loss = loss_sum.item() / layout.world  # waits for the device: the steps queued are done
        dt = pace.seconds_per_iter()
        if layout.distributed:
            pace.plan(iter_num, self.log_interval, dt, layout.device)
        if not layout.master:
            return loss
        tokens = self.tokens_per_iter
        mfu = self.mfu_of(tokens // layout.world, dt)
        mfu_text = f", mfu {mfu * 100:.1f}%" if mfu is not None else ""
        eta = pace.eta(iter_num, self.max_iters)
        eta_text = f", eta {duration(eta)}" if eta is not None and iter_num < self.max_iters else ""
        print(f"iter {iter_num}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, {tokens / dt:,.0f} tok/s"
              f"{mfu_text}{peak_memory(layout.device)}{eta_text}")
        if self.log:
            memory = torch.cuda.max_memory_allocated(layout.device) / 2**30 if layout.device.type == "cuda" else None
            self.log.write("train", self.seconds(), iter=iter_num, tokens=iter_num * tokens, loss=loss, lr=lr,
                           ms_per_iter=dt * 1000, tok_per_s=tokens / dt, mfu=mfu, peak_mem_gib=memory)
        remaining = self.max_iters - iter_num
        if pace.steady and not pace.shown and remaining > 0:
            print(f"at this pace the remaining {remaining:,} iterations take about {duration(remaining * dt)}, "
                  "evaluations not included", flush=True)
            pace.shown = True
        return loss

    def evaluation(self, iter_num: int, losses: dict[str, float], lr: float, hellaswag_examples: int = 0) -> None:
        """Rank 0: an evaluation's line (HellaSwag's on its own), its row in metrics.jsonl and in wandb."""
        bpb = f", val bpb {losses['val_bpb']:.4f}" if "val_bpb" in losses else ""
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{bpb}"
              f"{peak_memory(self.layout.device)}")
        if "hellaswag_acc" in losses:
            print(f"step {iter_num}: hellaswag acc {losses['hellaswag_acc']:.4f}, acc_norm "
                  f"{losses['hellaswag_acc_norm']:.4f} ({hellaswag_examples:,} examples)")
        others = {k: v for k, v in losses.items() if k not in ("train", "val")}  # bits per byte, HellaSwag
        if self.log:
            self.log.write("eval", self.seconds(), iter=iter_num, tokens=iter_num * self.tokens_per_iter,
                           train_loss=losses["train"], val_loss=losses["val"], **others)
        if self.wandb:
            extra = {f"val/{k.removeprefix('val_')}": v for k, v in others.items()}  # val/bpb, val/hellaswag_acc
            self.wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr,
                            **extra})

    def samples(self, iter_num: int, prompt: str, texts: dict[str, str]) -> None:
        """Rank 0: a prompt's continuations, one way each (greedy, sampled), printed and logged."""
        for way, text in texts.items():
            print(f"sample at iter {iter_num}, {way}: {prompt!r} -> {text!r}")
        if self.log:
            self.log.write("sample", self.seconds(), iter=iter_num, prompt=prompt, **texts)

    def target_reached(self, target: float, val_loss: float, iter_num: int) -> str:
        """The speedrun's measure of reaching target_val_loss: steps, tokens, wall time since launch,
        device-hours."""
        seconds, world = self.seconds(), self.layout.world
        device = "GPU" if self.layout.device.type == "cuda" else self.layout.device.type.upper()
        return (f"target val loss {target} reached: {val_loss:.4f} at iter {iter_num}, "
                f"{iter_num * self.tokens_per_iter:,} tokens, {seconds:.1f} s from launch, "
                f"{seconds * world / 3600:.4f} {device}-hours ({world} {device}(s))")


# ----------------------------------------------------------------------------------------------------------------
# the plotting command


@dataclass
class PlotConfig:
    """Draw the train and val losses of runs from their metrics logs (out_dir/metrics.jsonl) into a PNG: a line
    each, or for a recipe run with several seeds its mean and a band from its lowest to its highest. With steps or
    target, a time-to-quality table too."""

    runs: str = ""  # comma list of out_dirs, each holding a metrics.jsonl; a recipe of several seeds is
    # NAME=DIR+DIR+... (e.g. adamw=out-a1+out-a2,muon=out-m1+out-m2)
    x: str = "iter"  # iter | tokens | seconds: the horizontal axis; several, comma-separated: a panel each
    out: str = ""  # the PNG to write; empty: curves.png in the first run's folder, beside what it draws; none: no plot
    title: str = ""  # above the plot; empty: none
    steps: str = ""  # the table: comma list of iterations to read each recipe's val loss (and bits per byte) at
    target: float | None = None  # the table: the val loss whose first evaluation at or below it is reached


def recipes(spec: str) -> dict[str, list[str]]:
    """--runs as recipe name -> its runs' out_dirs: NAME=DIR+DIR, or a lone DIR (an existing folder is always one,
    whatever its name holds), named by its folder, or by its path where two folders share a name."""
    items = [i.strip() for i in spec.split(",") if i.strip()]
    if not items:
        raise UserError("--runs=OUT_DIR[,OUT_DIR...] is required: the runs whose metrics.jsonl to draw")
    lone = [i for i in items if os.path.isdir(i) or "=" not in i]
    names = [os.path.basename(os.path.normpath(i)) for i in lone]
    out: dict[str, list[str]] = {}
    for item in items:
        if item in lone:
            name = os.path.basename(os.path.normpath(item))
            name, runs = (name if names.count(name) == 1 else item), [item]
        else:
            name, _, dirs = item.partition("=")
            runs = [d for d in dirs.split("+") if d]
        if not name or not runs or name in out:
            raise UserError(f"--runs: '{item}' is not DIR or NAME=DIR+DIR (each name once)")
        out[name] = runs
    return out


def curves(rows: list[dict[str, Any]], x: str) -> dict[str, tuple[list[float], list[float]]]:
    """The train and val loss curves of one log: name -> (xs, losses), non-finite losses left out."""
    out: dict[str, tuple[list[float], list[float]]] = {"train": ([], []), "val": ([], [])}
    for row in rows:
        if row["kind"] not in ("train", "eval"):
            continue
        name, key = ("train", "loss") if row["kind"] == "train" else ("val", "val_loss")
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and x in row:
            out[name][0].append(row[x])
            out[name][1].append(value)
    return out


def band(runs: list[tuple[list[float], list[float]]], by_position: bool = False
         ) -> tuple[list[float], list[float], list[float], list[float]]:
    """Several seeds' curves as xs, mean, lowest and highest: at the xs every run has (iterations and tokens agree
    across seeds, though a log line that QUIET_S forces may come at another iteration in each); by_position, at the
    first run's xs, the i-th point of each (seconds, which differ from seed to seed)."""
    if by_position:
        n = min(len(xs) for xs, _ in runs)
        xs, columns = runs[0][0][:n], [[ys[i] for _, ys in runs] for i in range(n)]
    else:
        points = [dict(zip(*run)) for run in runs]
        xs = sorted(set.intersection(*(set(p) for p in points)))
        columns = [[p[x] for p in points] for x in xs]
    return (xs, [sum(c) / len(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns])


def spread(values: list[float], digits: int = 4) -> str:
    """'mean ± sample standard deviation' over seeds, or the one value."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def reached(rows: list[dict[str, Any]], target: float) -> tuple[int, float] | None:
    """The iteration and wall seconds of the first evaluation at or below target; None if none is."""
    for row in rows:
        if row["kind"] == "eval" and isinstance(row.get("val_loss"), (int, float)) and row["val_loss"] <= target:
            return row["iter"], row["seconds"]
    return None


def quality_table(logs: dict[str, list[list[dict[str, Any]]]], steps: list[int], target: float | None) -> str:
    """Per recipe (its seeds' runs): val loss and bits per byte at each step, and the steps and wall seconds to
    the target, as mean ± spread over the seeds; '-' where a run lacks the step, 'not finite (k of n)' where k
    seeds had diverged there, 'not reached (k of n)' where a seed never reached the target."""
    head = ["recipe", "seeds", *(f"val @ {s}" for s in steps), *(f"bpb @ {s}" for s in steps)]
    head += ["steps to target", "seconds to target"] if target is not None else []
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, runs in logs.items():
        cells = [name, str(len(runs))]
        for key in ("val_loss", "val_bpb"):
            for step in steps:
                found = [row.get(key) for rows in runs for row in rows if row["kind"] == "eval" and row["iter"] == step]
                values = [v for v in found if isinstance(v, (int, float)) and math.isfinite(v)]
                # 'nan' or 'inf', as a diverged run logs them; a log without the key (bpb for a token-only
                # dataset) has nothing to say there: '-'
                failed = sum(isinstance(v, str) or (isinstance(v, float) and not math.isfinite(v)) for v in found)
                if failed:
                    cells.append(f"not finite ({failed} of {len(runs)})")
                else:
                    cells.append(spread(values) if len(values) == len(runs) else "-")
        if target is not None:
            hits = [reached(rows, target) for rows in runs]
            done = [h for h in hits if h is not None]
            if len(done) == len(runs):
                cells += [spread([float(h[0]) for h in done], 0), spread([h[1] for h in done], 1)]
            else:
                cells += [f"not reached ({len(runs) - len(done)} of {len(runs)})"] * 2
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(cfg: PlotConfig, logs: dict[str, list[list[dict[str, Any]]]], first: str) -> str:
    """Draw the recipes' losses into a PNG; returns its path (cfg.out, or curves.png in the first run's folder)."""
    axes = [x.strip() for x in cfg.x.split(",")]
    configurator.require("matplotlib", "metrics.py's plots")
    plt = importlib.import_module("matplotlib.pyplot")
    plt.switch_backend("Agg")  # files only: no display is needed
    fig, panels = plt.subplots(1, len(axes), figsize=(2 + 6 * len(axes), 4.5), squeeze=False)
    for x, ax in zip(axes, panels[0]):
        for name, runs in logs.items():
            lines = [curves(rows, x) for rows in runs]
            color = None
            for split, style in (("train", {"alpha": 0.5}), ("val", {"marker": "o"})):
                xs, mean, low, high = band([line[split] for line in lines], by_position=x == "seconds")
                if not xs:  # a log of evaluations only: no train curve, and no legend entry for one
                    continue
                (drawn,) = ax.plot(xs, mean, color=color, label=f"{name} {split}", **style)
                color = drawn.get_color()
                if len(runs) > 1:
                    ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set(xlabel=X_AXES[x], ylabel="loss")
    panels[0][0].legend()
    if cfg.title:
        fig.suptitle(cfg.title)
    fig.tight_layout()
    out = cfg.out or os.path.join(first, "curves.png")
    tmp = f"{out}.tmp.{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def report(cfg: PlotConfig) -> list[str]:
    """The command: the time-to-quality table (with steps or target) and the plot (unless out=none); its lines."""
    for x in (x.strip() for x in cfg.x.split(",")):
        if x not in X_AXES:
            raise UserError(f"x must be one of {', '.join(X_AXES)} (or several, comma-separated), got '{x}'")
    named = recipes(cfg.runs)
    logs = {name: [read(run) for run in runs] for name, runs in named.items()}
    empty = [run for name, runs in named.items() for run, rows in zip(runs, logs[name]) if not rows]
    if empty:
        raise UserError(f"no {METRICS_FILE} rows in {', '.join(empty)}: train there first")
    try:
        steps = [int(s) for s in cfg.steps.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--steps must be a comma list of iterations, got '{cfg.steps}'") from None
    lines = [quality_table(logs, steps, cfg.target)] if steps or cfg.target is not None else []
    if cfg.out != "none":
        lines.append(f"wrote {plot(cfg, logs, next(iter(named.values()))[0])}")
    return lines


def main(argv: list[str]) -> None:
    print("\n".join(report(configurator.load(PlotConfig, argv))))


if __name__ == "__main__":
    process.run(main)
