"""metrics.py: train.py's out_dir/metrics.jsonl (its rows, across a resume without a gap or a duplicate, what a
kill leaves), and the plotting command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import metrics
import train
from configurator import UserError
from conftest import TINY_MODEL, CharData, run_main, tiny_flags

TOKENS = 8 * TINY_MODEL["block_size"]  # per iteration: tiny_flags' batch of 8, one micro-step


def rows(out_dir: Path) -> list[tuple[str, int]]:
    return [(row["kind"], row["iter"]) for row in metrics.read(str(out_dir))]


def run(char_data: CharData, out_dir: Path, **overrides: object) -> dict:
    flags = {"max_iters": 8, "eval_interval": 4, "log_interval": 2, "always_save_checkpoint": True} | overrides
    return train.main(tiny_flags(char_data, out_dir, **flags))


def test_every_log_line_and_evaluation_is_a_row(char_data: CharData, tmp_path: Path):
    history = run(char_data, tmp_path / "out")
    log = metrics.read(str(tmp_path / "out"))
    assert [(r["kind"], r["iter"]) for r in log] == [("train", 2), ("train", 4), ("eval", 4), ("train", 6),
                                                     ("train", 8), ("eval", 8)]
    train_rows = [r for r in log if r["kind"] == "train"]
    assert [r["loss"] for r in train_rows] == [loss for it, loss in history["train_loss"] if it % 2 == 0]
    assert [(r["iter"], r["train_loss"], r["val_loss"]) for r in log if r["kind"] == "eval"] == history["eval"]
    assert all(r["tokens"] == r["iter"] * TOKENS for r in log)
    assert all(r["lr"] == 1e-2 and r["ms_per_iter"] > 0 and r["tok_per_s"] > 0 for r in train_rows)
    assert "peak_mem_gib" not in train_rows[0]  # a CPU run has no device memory to report
    seconds = [r["seconds"] for r in log]
    assert seconds == sorted(seconds) and seconds[0] > 0


def test_a_resumed_run_continues_the_log_without_a_gap_or_a_duplicate(char_data: CharData, tmp_path: Path):
    out = tmp_path / "out"
    run(char_data, out)
    # what a run killed after iteration 10 would have logged beyond its last checkpoint (8), and a line cut short
    with open(out / metrics.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "train", "iter": 10, "tokens": 10 * TOKENS, "loss": 1.0, "seconds": 99.0}))
        f.write('\n{"kind": "tra')
    before = metrics.read(str(out))
    run(char_data, out, max_iters=12, init_from="resume")
    assert rows(out) == [("train", 2), ("train", 4), ("eval", 4), ("train", 6), ("train", 8), ("eval", 8),
                         ("train", 10), ("train", 12), ("eval", 12)]
    after = metrics.read(str(out))
    assert after[:5] == before[:5]  # the rows up to the checkpoint stay as they were; its evaluation is redone
    assert after[6]["seconds"] > after[4]["seconds"]  # the new launch's time counts on from the old one's
    assert not list(out.glob("metrics.jsonl.tmp*"))


def test_a_run_from_scratch_starts_a_new_log(char_data: CharData, tmp_path: Path):
    out = tmp_path / "out"
    run(char_data, out)
    run(char_data, out, max_iters=4, overwrite=True)
    assert rows(out) == [("train", 2), ("train", 4), ("eval", 4)]


def test_a_file_that_is_not_a_metrics_log_is_one_line(tmp_path: Path):
    (tmp_path / metrics.METRICS_FILE).write_text("not json\n{}\n", encoding="utf-8")
    code, _, err = run_main(metrics, [f"--runs={tmp_path}"])
    assert (code, err) == (2, f"error: {tmp_path / metrics.METRICS_FILE} line 1 is not JSON: the file is not a "
                              "metrics log\n")


def test_the_plot_command_draws_several_runs_against_any_axis(char_data: CharData, tmp_path: Path):
    pytest.importorskip("matplotlib")  # requirements-extra.txt (in requirements-dev.txt) installs it: CI draws
    run(char_data, tmp_path / "a")
    run(char_data, tmp_path / "b", learning_rate=3e-3)
    for x in [*metrics.X_AXES, "iter, seconds"]:
        png = tmp_path / f"{x}.png"
        code, out, err = run_main(metrics, [f"--runs={tmp_path / 'a'},{tmp_path / 'b'}", f"--x={x}", f"--out={png}"])
        assert (code, out, err) == (0, f"wrote {png}\n", "")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert metrics.curves(metrics.read(str(tmp_path / "a")), "tokens")["val"][0] == [4 * TOKENS, 8 * TOKENS]

    def width(png: Path) -> int:  # the PNG header's IHDR width
        return int.from_bytes(png.read_bytes()[16:20], "big")

    assert width(tmp_path / "iter, seconds.png") > 1.5 * width(tmp_path / "iter.png")  # two panels side by side


def test_the_plot_command_writes_into_the_first_runs_folder_without_out(tmp_path: Path):
    pytest.importorskip("matplotlib")
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:  # a log by hand: the default path needs no training
        run_dir.mkdir()
        log = metrics.MetricsLog(str(run_dir), start=0, reevaluates=False)
        for it, loss in ((1, 3.0), (2, 2.5)):
            log.write("train", float(it), iter=it, tokens=it * TOKENS, loss=loss)
        log.write("eval", 2.0, iter=2, tokens=2 * TOKENS, train_loss=2.5, val_loss=2.6)
        log.close()
    code, out, err = run_main(metrics, [f"--runs={runs[0]},{runs[1]}"])
    assert (code, out, err) == (0, f"wrote {runs[0] / 'curves.png'}\n", "")
    assert (runs[0] / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(Path.cwd().iterdir()) == [] and not (runs[1] / "curves.png").exists()  # nothing where it was run


@pytest.mark.parametrize(("args", "message"), [
    ([], "--runs=OUT_DIR[,OUT_DIR...] is required: the runs whose metrics.jsonl to draw"),
    (["--runs=RUN", "--x=steps"], "x must be one of iter, tokens, seconds (or several, comma-separated), got 'steps'"),
    (["--runs=RUN", "--x=iter,"], "x must be one of iter, tokens, seconds (or several, comma-separated), got ''"),
    (["--runs=RUN"], "no metrics.jsonl rows in RUN: train there first"),
])
def test_the_plot_command_refuses_in_one_line(tmp_path: Path, args: list[str], message: str):
    args = [a.replace("RUN", str(tmp_path)) for a in args]
    code, _, err = run_main(metrics, [*args, f"--out={tmp_path / 'x.png'}"])
    assert (code, err) == (2, f"error: {message.replace('RUN', str(tmp_path))}\n")


@pytest.mark.usefixtures("one_process_group")
def test_several_processes_agree_on_the_iteration_of_the_next_log_line():
    # their clocks differ, so they agree at each line: within QUIET_S at the pace measured, never later than
    # log_interval; the first line comes after the first step
    pace = metrics.Pace()
    assert pace.overdue(1, distributed=True)
    pace.plan(10, log_interval=100, seconds_per_iter=metrics.QUIET_S / 4, device=torch.device("cpu"))
    assert pace.next_line == 14 and not pace.overdue(13, distributed=True) and pace.overdue(14, distributed=True)
    pace.plan(14, log_interval=3, seconds_per_iter=metrics.QUIET_S / 4, device=torch.device("cpu"))
    assert pace.next_line == 17
    pace.plan(17, log_interval=100, seconds_per_iter=metrics.QUIET_S * 5, device=torch.device("cpu"))
    assert pace.next_line == 18  # slower than QUIET_S a step: every step


def test_durations_read_as_a_person_would():
    assert [metrics.duration(s) for s in (45, 720, 3.4 * 3600, 2.5 * 86400)] == ["45 s", "12 min", "3.4 h", "2.5 days"]


def hand_log(run_dir: Path, evals: list[tuple[int, float, float, float]]) -> None:
    """A metrics log by hand: (iter, seconds, val loss, val bpb) evaluations."""
    run_dir.mkdir()
    log = metrics.MetricsLog(str(run_dir), start=0, reevaluates=False)
    for it, seconds, val, bpb in evals:
        log.write("eval", seconds, iter=it, tokens=it * TOKENS, train_loss=val + 0.1, val_loss=val, val_bpb=bpb)
    log.close()


def test_the_time_to_quality_table_gives_each_recipe_its_mean_and_spread_over_seeds(tmp_path: Path):
    # two seeds of one recipe, one of another; by hand: at step 100 the first's val losses 3.0 and 3.2 have mean
    # 3.1 and sample standard deviation sqrt(((-0.1)**2 + 0.1**2) / 1) = 0.1414; it reaches 3.05 at steps 100
    # and 200 (mean 150, sd 70.71) after 10 and 30 s (mean 20.0, sd 14.1); the second never reaches it
    hand_log(tmp_path / "a1", [(100, 10.0, 3.0, 4.3), (200, 20.0, 2.5, 3.6)])
    hand_log(tmp_path / "a2", [(100, 12.0, 3.2, 4.6), (200, 30.0, 2.9, 4.2)])
    hand_log(tmp_path / "b1", [(100, 9.0, 3.5, 5.0), (200, 18.0, 3.3, 4.8)])
    runs = f"a={tmp_path / 'a1'}+{tmp_path / 'a2'},b={tmp_path / 'b1'}"
    code, out, err = run_main(metrics, [f"--runs={runs}", "--steps=100,150", "--target=3.05", "--out=none"])
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "| recipe | seeds | val @ 100 | val @ 150 | bpb @ 100 | bpb @ 150 | steps to target | seconds to target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        "| a | 2 | 3.1000 ± 0.1414 | - | 4.4500 ± 0.2121 | - | 150 ± 71 | 20.0 ± 14.1 |",
        "| b | 1 | 3.5000 | - | 5.0000 | - | not reached (1 of 1) | not reached (1 of 1) |"]


def test_a_recipe_of_several_seeds_is_drawn_as_a_band(tmp_path: Path):
    pytest.importorskip("matplotlib")
    hand_log(tmp_path / "a1", [(100, 10.0, 3.0, 4.3), (200, 20.0, 2.5, 3.6)])
    hand_log(tmp_path / "a2", [(100, 12.0, 3.2, 4.6), (200, 30.0, 2.9, 4.2)])
    xs, mean, low, high = metrics.band([metrics.curves(metrics.read(str(tmp_path / r)), "iter")["val"]
                                        for r in ("a1", "a2")])
    assert (xs, low, high) == ([100, 200], [3.0, 2.5], [3.2, 2.9]) and mean == pytest.approx([3.1, 2.7])
    png = tmp_path / "band.png"
    code, out, err = run_main(metrics, [f"--runs=a={tmp_path / 'a1'}+{tmp_path / 'a2'}", f"--out={png}"])
    assert (code, out, err) == (0, f"wrote {png}\n", "") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("runs", ["a=", "=x", "a=x,a=y", ","])
def test_a_malformed_recipe_is_one_line(runs: str):
    code, _, err = run_main(metrics, [f"--runs={runs}", "--out=none"])
    assert code == 2 and err.startswith("error: --runs") and err.count("\n") == 1


@pytest.mark.parametrize(("damage", "message"), [
    (b"\xff\n", "is not a metrics log: byte "),
    (b'{"kind": "train", "seconds": 1.0}\n', "line 3 is not a metrics row"),
    (b'{"kind": "eval", "iter": 2, "seconds": "x"}\n', "line 3 is not a metrics row")])
def test_a_damaged_log_stops_a_resume_in_one_line_before_it_trains(char_data: CharData, tmp_path: Path,
                                                                    damage: bytes, message: str):
    out_dir = tmp_path / "out"
    run(char_data, out_dir)
    rows = (out_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (out_dir / "metrics.jsonl").write_bytes(b"".join(rows[:2]) + damage + b"".join(rows[2:]))
    code, out, err = run_main("train.py", tiny_flags(char_data, out_dir, max_iters=12, eval_interval=4,
                                                     init_from="resume"))
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err
    assert "iter 9" not in out  # refused before any step


def test_a_full_disk_while_the_log_is_written_stops_the_run_in_one_line(char_data: CharData, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    out_dir = tmp_path / "out"
    real_write = metrics.MetricsLog.write
    calls = []

    def write(self: metrics.MetricsLog, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 7:  # a row after the first checkpoint finds the disk full
            original_write = self.file.write

            def cut(text: str) -> int:  # the start of the row, then the disk is full
                original_write(text[:12])
                raise OSError(28, "No space left on device")

            self.file.write = cut
        real_write(self, *args, **kwargs)

    monkeypatch.setattr(metrics.MetricsLog, "write", write)
    with pytest.raises(UserError, match=r"^cannot write .*metrics\.jsonl: No space left on device; the run stops "
                                        r"\(its last checkpoint stays: resume from it once there is room\)$"):
        train.main(tiny_flags(char_data, out_dir, max_iters=12, eval_interval=4))
    monkeypatch.undo()
    assert len(metrics.read(str(out_dir))) == 6  # the cut row, the log's last line, is left out
    train.main(tiny_flags(char_data, out_dir, max_iters=12, eval_interval=4, init_from="resume"))
    assert all(isinstance(row["iter"], int) for row in metrics.read(str(out_dir)))


def test_a_diverged_seed_is_said_and_a_folder_named_with_an_equals_sign_is_a_run(tmp_path: Path):
    hand_log(tmp_path / "lr=1e-3", [(100, 10.0, 3.0, 4.3)])
    hand_log(tmp_path / "x+y", [(100, 10.0, 3.2, 4.6)])
    hand_log(tmp_path / "nan", [(100, 10.0, float("nan"), float("nan"))])  # written as 'nan', as a diverged run
    (tmp_path / "again").mkdir()
    hand_log(tmp_path / "again" / "x+y", [(100, 10.0, 3.4, 4.9)])  # a second folder of that name
    (tmp_path / "no_bpb").mkdir()  # a log with val loss only, as one written from another program's lines
    (tmp_path / "no_bpb" / "metrics.jsonl").write_text('{"kind": "eval", "iter": 100, "val_loss": 3.5, "seconds": 9}\n')
    runs = f"{tmp_path / 'lr=1e-3'},{tmp_path / 'x+y'},{tmp_path / 'again' / 'x+y'},d={tmp_path / 'nan'}," \
           f"{tmp_path / 'no_bpb'}"
    code, out, err = run_main(metrics, [f"--runs={runs}", "--steps=100", "--out=none"])
    assert (code, err) == (0, "")
    assert out.splitlines()[2:] == [
        "| lr=1e-3 | 1 | 3.0000 | 4.3000 |",
        f"| {tmp_path / 'x+y'} | 1 | 3.2000 | 4.6000 |",  # two folders named x+y: named by their paths
        f"| {tmp_path / 'again' / 'x+y'} | 1 | 3.4000 | 4.9000 |",
        "| d | 1 | not finite (1 of 1) | not finite (1 of 1) |",
        "| no_bpb | 1 | 3.5000 | - |"]
