"""bench.py on CPU with a tiny model: rows, table, JSON, real data, and refused settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import bench
from configurator import UserError
from tokenizer import write_meta

TINY = ["--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--vocab_size=64",
        "--compile=off", "--warmup=1", "--iters=2"]


def test_synthetic_rows_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    rows = bench.main([*TINY, "--batch_size=2,4", f"--json={out}"])
    assert [(r["compile"], r["batch_size"], r["status"]) for r in rows] == [("off", 2, "ok"), ("off", 4, "ok")]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["ms_per_iter"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch_size"] * 32 / (r["ms_per_iter"] / 1000), rel=1e-6)
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # no known peak, no CUDA memory stats on CPU
        assert r["device"] == "cpu" and r["dtype"] == "float32" and r["data"] == "synthetic"
        assert np.isfinite(r["loss"]) and r["loss"] > 0
    assert json.loads(out.read_text()) == rows
    printed = capsys.readouterr().out
    assert "| compile | batch | ms/iter | tokens/s | MFU | peak mem (GiB) | warm-up (s) | loss |" in printed
    assert "cpu, torch " in printed and "GPT 2 layers, 2 heads, 32 wide, block 32, vocab 64" in printed
    assert "`python bench.py --device=cpu" in printed
    assert "| off | 4 |" in printed and "| - | - |" in printed  # MFU and memory shown as "-"


def test_real_data(tmp_path: Path) -> None:
    chars = "abcdefgh"
    data_dir = tmp_path / "tiny"
    data_dir.mkdir()
    tokens = np.random.default_rng(0).integers(0, len(chars), size=2000).astype(np.uint16)
    for split in ("train", "val"):
        tokens.tofile(data_dir / f"{split}.bin")
    write_meta(str(data_dir), {"tokenizer": "char", "vocab_size": len(chars), "dtype": "uint16", "eot_id": None,
                               "chars": chars, "source": "test"})
    rows = bench.main([*TINY, "--batch_size=2", "--gradient_accumulation_steps=2", f"--data_root={tmp_path}",
                       "--dataset=tiny"])
    (row,) = rows
    assert row["status"] == "ok" and row["data"] == "tiny" and row["accum"] == 2
    assert row["tokens_per_s"] == pytest.approx(2 * 32 * 2 / (row["ms_per_iter"] / 1000), rel=1e-6)
    with pytest.raises(UserError, match="vocab_size=64"):  # 8 chars fit vocab 64, not vocab 4
        bench.main([*TINY, "--vocab_size=4", f"--data_root={tmp_path}", "--dataset=tiny"])


@pytest.mark.parametrize("flag", ["--compile=maybe", "--batch_size=2,x", "--batch_size=0", "--iters=0",
                                  "--n_head=3", "--dataset=missing"])
def test_user_errors(flag: str, tmp_path: Path) -> None:
    with pytest.raises(UserError):
        bench.main([*TINY, f"--data_root={tmp_path}", flag])


def test_oom_row_recorded_and_run_goes_on(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_row = bench.bench_row

    def row_or_oom(*args: object) -> dict:
        if args[-1] == 4:  # batch size 4 does not fit
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_row(*args)

    monkeypatch.setattr(bench, "bench_row", row_or_oom)
    rows = bench.main([*TINY, "--batch_size=4,2"])
    assert [(r["batch_size"], r["status"]) for r in rows] == [(4, "OOM"), (2, "ok")]
    assert rows[0]["ms_per_iter"] is None and rows[1]["ms_per_iter"] > 0
    assert "| off (OOM) | 4 | - | - | - | - | - | - |" in capsys.readouterr().out
