"""A run's record: out_dir/metrics.jsonl, one JSON object per log line and per evaluation of train.py, and a
command that draws the losses of one or several runs against iterations, tokens or wall seconds.

    python metrics.py --runs=out-a,out-b --x=tokens --out=curves.png   # needs matplotlib
    python metrics.py --runs=out-a,out-b --x=iter,seconds                # side by side, into out-a/curves.png

Rows: {"kind": "train", "iter", "tokens", "seconds", "loss", "lr", "ms_per_iter", "tok_per_s", "mfu",
"peak_mem_gib"}, {"kind": "eval", "iter", "tokens", "seconds", "train_loss", "val_loss", "val_bpb"} and, with
sample_interval, {"kind": "sample", "iter", "seconds", "prompt", "greedy", "sampled"}; mfu, memory and bits per
byte only where they are known. "seconds" is wall time from the first launch, summed over resumes (the time
between a stop and the resume not counted). A resumed run first drops what came after its checkpoint (those
iterations are run again), so the log has neither a gap nor a duplicate; a run from scratch starts a new log.
Only rank 0 writes.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import configurator
import process
from configurator import UserError

METRICS_FILE = "metrics.jsonl"
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
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    for n, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # written when the process was killed: the rest of the log is whole
                continue
            raise UserError(f"{path} line {n + 1} is not JSON: the file is not a metrics log") from None
        if not isinstance(row, dict) or row.get("kind") not in ("train", "eval", "sample"):
            raise UserError(f"{path} line {n + 1} is not a metrics row")
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
        with open(tmp, "w", encoding="utf-8") as f:  # replaced whole: a kill leaves the old log or the new one
            f.writelines(json.dumps(row) + "\n" for row in kept)
        os.replace(tmp, self.path)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run's life; close())

    def write(self, kind: str, seconds: float, **values: Any) -> None:
        """One row; seconds: wall time since this launch. A value of None is left out, a non-finite float is
        written as a string ('nan', 'inf'): JSON has no such numbers."""
        row = {"kind": kind, **{k: v for k, v in values.items() if v is not None},
               "seconds": round(self.offset + seconds, 3)}
        row = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ----------------------------------------------------------------------------------------------------------------
# the plotting command


@dataclass
class PlotConfig:
    """Draw the train and val losses of runs from their metrics logs (out_dir/metrics.jsonl) into a PNG."""

    runs: str = ""  # comma list of out_dirs, each holding a metrics.jsonl
    x: str = "iter"  # iter | tokens | seconds: the horizontal axis; several, comma-separated: a panel each
    out: str = ""  # the PNG to write; empty: curves.png in the first run's folder, beside what it draws
    title: str = ""  # above the plot; empty: none


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


def plot(cfg: PlotConfig) -> str:
    """Draw the runs' losses into a PNG; returns its path (cfg.out, or curves.png in the first run's folder)."""
    axes = [x.strip() for x in cfg.x.split(",")]
    for x in axes:
        if x not in X_AXES:
            raise UserError(f"x must be one of {', '.join(X_AXES)} (or several, comma-separated), got '{x}'")
    runs = [r for r in cfg.runs.split(",") if r]
    if not runs:
        raise UserError("--runs=OUT_DIR[,OUT_DIR...] is required: the runs whose metrics.jsonl to draw")
    logs = {run: read(run) for run in runs}
    empty = [run for run, rows in logs.items() if not rows]
    if empty:
        raise UserError(f"no {METRICS_FILE} rows in {', '.join(empty)}: train there first")
    configurator.require("matplotlib", "metrics.py's plots")
    plt = importlib.import_module("matplotlib.pyplot")
    plt.switch_backend("Agg")  # files only: no display is needed
    fig, panels = plt.subplots(1, len(axes), figsize=(2 + 6 * len(axes), 4.5), squeeze=False)
    names = [os.path.basename(os.path.normpath(run)) for run in runs]
    for x, ax in zip(axes, panels[0]):
        for run, name in zip(runs, names if len(set(names)) == len(names) else runs):  # folder names, if they differ
            lines = curves(logs[run], x)
            (train,) = ax.plot(*lines["train"], alpha=0.5, label=f"{name} train")
            ax.plot(*lines["val"], marker="o", color=train.get_color(), label=f"{name} val")
        ax.set(xlabel=X_AXES[x], ylabel="loss")
    panels[0][0].legend()
    if cfg.title:
        fig.suptitle(cfg.title)
    fig.tight_layout()
    out = cfg.out or os.path.join(runs[0], "curves.png")
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


def main(argv: list[str]) -> None:
    print(f"wrote {plot(configurator.load(PlotConfig, argv))}")


if __name__ == "__main__":
    process.run(main)
