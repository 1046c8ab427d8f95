"""A prepared dataset on disk: train.bin, val.bin and meta.json: their format, the checks of meta.json, and their
atomic writing.

Every data/<name>/prepare.py writes such a folder and train.py, evaluate.py and bench.py read it, so what they must
agree on lives here: the on-disk dtype of the token ids (uint16 when the vocabulary fits, else uint32), what a valid
meta.json holds (which tokenizer made the ids, the vocabulary size, the end-of-text id), and that a new dataset
replaces an old one only once all its files are complete. A folder nanoGPT prepared (meta.pkl, or no meta file at
all) reads as nanoGPT reads it. Nothing here builds a tokenizer: an offline GPU node may lack the BPE files.

The leak check measures how much of val could be recalled from train (a token and the 32 before it found verbatim
there): prepare scripts print it, and any prepared folder can be checked:

    python datafiles.py --data_dir=data/files [--ngram=32]
"""

from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
import contextlib
import json
import os
import pickle
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import configurator
import process
import safeload
from configurator import UserError
from tokenizer import GPT2_META

META_FILE = "meta.json"
NANOGPT_META = "meta.pkl"  # what nanoGPT's char prepare scripts write instead
TOKEN_DTYPES = ("uint16", "uint32")  # the on-disk dtypes of train.bin / val.bin
DATASET_FILES = ("train.bin", "val.bin", META_FILE)  # in the order staged renames them into place: meta.json last
# staged's temporary file for a dataset file, and the pid of the process writing it
STAGED_TEMP = re.compile(r"\.(?:" + "|".join(map(re.escape, DATASET_FILES)) + r")\.tmp-(\d+)")


def bin_path(data_dir: str, split: str) -> str:
    """Where a prepared dataset keeps a split's tokens: data_dir/train.bin, data_dir/val.bin."""
    return os.path.join(data_dir, f"{split}.bin")


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def check_meta(meta: dict[str, Any]) -> None:
    """Raise ValueError naming what is wrong with a meta dict. Builds no tokenizer: training, which reads the
    meta, never needs one (an offline GPU node may lack the BPE files)."""
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("tokenizer", "vocab_size", "dtype", "eot_id") if k not in meta]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if meta["tokenizer"] not in ("char", "gpt2"):
        raise ValueError(f"unknown tokenizer {meta['tokenizer']!r} (char, gpt2)")
    vocab = meta["vocab_size"]
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab!r}")
    if meta["dtype"] not in TOKEN_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(TOKEN_DTYPES)}, got {meta['dtype']!r}")
    if vocab > np.iinfo(meta["dtype"]).max + 1:
        raise ValueError(f"vocab_size {vocab} does not fit dtype {meta['dtype']}")
    eot = meta["eot_id"]
    if eot is not None and not (isinstance(eot, int) and 0 <= eot < vocab):
        raise ValueError(f"eot_id must be None or a token id below vocab_size, got {eot!r}")
    if meta["tokenizer"] == "char" and len(meta.get("chars", "")) != vocab:
        raise ValueError(f"{len(meta.get('chars', ''))} chars for vocab_size {vocab}")


def read_meta(data_dir: str) -> dict[str, Any]:
    """data_dir's meta.json; for a folder nanoGPT prepared, its meta.pkl (a char vocabulary), or where it has
    neither but a train.bin, GPT-2's BPE in uint16, as nanoGPT reads such a folder."""
    path = os.path.join(data_dir, META_FILE)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(data_dir, NANOGPT_META)):
            return meta_from_pickle(os.path.join(data_dir, NANOGPT_META))
        if os.path.isfile(os.path.join(data_dir, "train.bin")):
            print(f"note: {data_dir} has no meta.json or meta.pkl: its ids are read as GPT-2 BPE (uint16), as nanoGPT "
                  "reads them", file=sys.stderr)
            return GPT2_META | {"source": f"{data_dir} (no meta file: GPT-2 BPE assumed)"}
        name = os.path.basename(os.path.normpath(data_dir))
        raise UserError(f"{path} not found: prepare the data first with python data/{name}/prepare.py")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        check_meta(meta)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a valid meta file ({e})") from None
    check_sizes(data_dir, meta.pop("sizes", None))
    return meta  # without the sizes: what the files mean, not how long they were (a checkpoint records it)


def check_sizes(data_dir: str, sizes: dict[str, int] | None) -> None:
    """Refuse a folder whose .bin files are not the ones its meta.json was written with (the sizes staged records
    there): a prepare killed between its renames leaves a new train.bin beside an old val.bin and meta.json."""
    if sizes is not None and not (isinstance(sizes, dict) and all(
            name in DATASET_FILES and isinstance(size, int) for name, size in sizes.items())):
        raise UserError(f"{os.path.join(data_dir, META_FILE)} is not a valid meta file (sizes: {sizes!r})")
    for name, size in (sizes or {}).items():
        path = os.path.join(data_dir, name)
        have = os.path.getsize(path) if os.path.isfile(path) else None
        if have != size:
            found = f"{have:,} bytes" if have is not None else "missing"
            raise UserError(f"{data_dir} is not one prepared dataset: {name} is {found}, its meta.json was written "
                            f"with one of {size:,}: a prepare stopped midway; prepare it again")


def meta_from_pickle(path: str) -> dict[str, Any]:
    """nanoGPT's meta.pkl (vocab_size, itos, stoi of a char vocabulary), read without running code
    (safeload: plain data only), as a meta dict."""
    try:
        with open(path, "rb") as f:
            data = safeload.loads(f.read())
        chars = "".join(data["itos"][i] for i in range(data["vocab_size"]))
        meta = {"tokenizer": "char", "vocab_size": len(chars), "dtype": "uint16", "eot_id": None, "chars": chars,
                "source": path}
        check_meta(meta)
    except safeload.Refused as e:
        raise UserError(f"refusing {path}: {e}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a readable nanoGPT meta.pkl ({type(e).__name__}: {e})") from None
    return meta


def write_meta(data_dir: str, meta: dict[str, Any]) -> None:
    """meta: tokenizer ('char' | 'gpt2'), vocab_size, dtype, eot_id (or None), chars (char only), source."""
    dump_meta(meta, os.path.join(data_dir, META_FILE))


def dump_meta(meta: dict[str, Any], path: str) -> None:
    check_meta(meta)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)


@contextlib.contextmanager
def staged(data_dir: str) -> Iterator[dict[str, str]]:
    """Paths to write a dataset's files to (DATASET_FILES -> a temporary path beside each, unique to this process,
    so two prepares do not collide). When the block ends, they are renamed over data_dir's files, meta.json last,
    with Ctrl-C held back until all are in place; if it raises or is interrupted (a Ctrl-C that a finaliser
    swallowed included), they are removed instead: the old files stay as they were until every new one is
    complete. Temporary files of earlier prepares that were killed are removed first. A failed write (a full
    disk, an unwritable folder) is a UserError that says so."""
    tmp = {name: os.path.join(data_dir, f".{name}.tmp-{os.getpid()}") for name in DATASET_FILES}
    try:
        os.makedirs(data_dir, exist_ok=True)
        process.remove_dead_writers(data_dir, STAGED_TEMP)
        yield tmp
        record_sizes(tmp)
        with process.uninterrupted():
            if process.INTERRUPTS:  # a Ctrl-C that Python could not raise where it came: keep the old data
                raise KeyboardInterrupt
            for name in DATASET_FILES:
                os.replace(tmp[name], os.path.join(data_dir, name))
    except OSError as e:
        raise UserError(f"cannot write to {data_dir}: {e.strerror or e}; the files there are left as they were") \
            from None
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)


def record_sizes(tmp: dict[str, str]) -> None:
    """Write into the staged meta.json the sizes of the .bin files staged beside it, which read_meta checks: the
    three files can never be used as a mixed set."""
    with open(tmp[META_FILE], encoding="utf-8") as f:
        meta = json.load(f)
    meta["sizes"] = {name: os.path.getsize(tmp[name]) for name in DATASET_FILES if name != META_FILE}
    dump_meta(meta, tmp[META_FILE])


def write_dataset(data_dir: str, splits: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the train and val splits' token ids and meta.json into data_dir through staged: earlier files are
    replaced only once every new one is complete. A split of fewer than two tokens is refused before anything is
    written, so good data is never replaced by worse."""
    check_meta(meta)
    short = [f"{name} split would hold {len(ids)} token(s)" for name, ids in splits.items() if len(ids) < 2]
    if short:  # not even one (input, target) pair
        raise UserError(f"the {' and the '.join(short)}: the source text is too short; the data in {data_dir} is "
                        "left as it was")
    with staged(data_dir) as tmp:
        for name, ids in splits.items():
            ids.astype(meta["dtype"]).tofile(tmp[f"{name}.bin"])
        dump_meta(meta, tmp[META_FILE])


# ----------------------------------------------------------------------------------------------------------------
# the leak check: how much of val a model could recall from train rather than predict

MIX = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit multiplier: the window hash's base
LEAK_SAMPLE = 1 << 26  # windows of train hashed at most (a consistent sample of them beyond, val's alike)
BLOCK = 1 << 24  # tokens hashed at once: bounds the memory of a large split


def window_hashes(ids: np.ndarray, n: int, below: np.uint64 | None = None) -> np.ndarray:
    """A 64-bit hash of every window of n consecutive ids, h[i] of ids[i : i + n]: the polynomial in MIX of the
    window's ids (wrap-around arithmetic), built from the hashes of windows of 1, 2, 4, ... ids (log2(n) passes
    over the data, not n), then splitmix64's finaliser, whose high bits sample windows evenly. BLOCK tokens at a
    time. With `below`, only the hashes under it (a consistent sample), kept block by block: a large split's
    windows never all sit in memory."""
    windows = max(0, len(ids) - n + 1)
    out = np.empty(windows if below is None else 0, dtype=np.uint64)
    kept: list[np.ndarray] = []
    with np.errstate(over="ignore"):
        for start in range(0, windows, BLOCK):
            stop = min(start + BLOCK, windows)
            power = ids[start : stop + n - 1].astype(np.uint64) + np.uint64(1)  # windows of `length` ids
            length, h, covered = 1, None, 0  # h[i]: the hash of the `covered` ids from i
            while True:
                if n & length:  # append the next `length` ids to every window
                    h = power[covered:].copy() if h is None else \
                        h[: len(power) - covered] * np.uint64(pow(int(MIX), length, 2**64)) + power[covered:]
                    covered += length
                if 2 * length > n:
                    break
                power = power[:-length] * np.uint64(pow(int(MIX), length, 2**64)) + power[length:]
                length *= 2
            h ^= h >> np.uint64(30)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(27)
            h *= np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
            if below is None:
                out[start:stop] = h
            else:
                kept.append(h[h < below])
    return out if below is None else np.concatenate(kept or [np.empty(0, dtype=np.uint64)])


class TrainWindows:
    """The hashes of every window of n + 1 tokens of train (window_hashes), sorted; beyond LEAK_SAMPLE of them a
    consistent sample, by the hash's high bits, which val's windows are then sampled by alike."""

    def __init__(self, train: np.ndarray, n: int) -> None:
        self.n = n
        self.keep = min(1.0, LEAK_SAMPLE / max(1, len(train) - n))
        self.limit = np.uint64(min(2**64 - 1, int(self.keep * 2**64)))
        self.seen = np.sort(self.sampled(train))

    def sampled(self, ids: np.ndarray) -> np.ndarray:
        return window_hashes(ids, self.n + 1, None if self.keep == 1.0 else self.limit)

    def copied(self, ids: np.ndarray) -> tuple[int, int]:
        """Of ids' tokens with n before them (those sampled), how many occur in train after the same n tokens, and
        how many were looked up."""
        asked = np.sort(self.sampled(ids))  # in order: the searches walk seen once, not at random
        if not len(asked) or not len(self.seen):
            return 0, len(asked)
        found = np.searchsorted(self.seen, asked)
        found[found == len(self.seen)] = 0  # past the end: compared with the first, which differs unless equal
        return int(np.sum(self.seen[found] == asked)), len(asked)


def leak_share(train: np.ndarray, val: np.ndarray, n: int = 32) -> tuple[float, int]:
    """The share of val's tokens (each with n tokens before it in val) that could be copied from train: the token
    and its n predecessors occur verbatim, in that order, in train. Windows are compared by a 64-bit hash; beyond
    LEAK_SAMPLE windows of train, both splits' windows are sampled alike, by the hash's high bits, so the share is
    an unbiased estimate. Returns the share and the number of val windows it was measured on."""
    if len(val) <= n or len(train) <= n:
        return 0.0, 0
    hits, asked = TrainWindows(train, n).copied(val)
    return (hits / asked if asked else 0.0), asked


@dataclass
class LeakConfig:
    """How much of a prepared dataset's val split could be recalled from its train split rather than predicted."""

    data_dir: str = ""  # the dataset's folder: train.bin, val.bin, meta.json (required)
    ngram: int = 32  # a val token counts as copyable when it and its ngram predecessors occur verbatim in train


def leak_line(data_dir: str, n: int) -> str:
    """The leak check of data_dir's splits in a line."""
    meta = read_meta(data_dir)
    for split in ("train", "val"):
        if not os.path.isfile(bin_path(data_dir, split)) or not os.path.getsize(bin_path(data_dir, split)):
            raise UserError(f"{bin_path(data_dir, split)} is missing or empty: prepare {data_dir} again")
    splits = {s: np.memmap(bin_path(data_dir, s), dtype=meta["dtype"], mode="r") for s in ("train", "val")}
    return leak_text(*leak_share(splits["train"], splits["val"], n), len(splits["val"]), n)


def leak_text(share: float, windows: int, val_tokens: int, n: int) -> str:
    """The leak check's line: leak_share's share and windows, of val_tokens."""
    return (f"leak check: {share:.1%} of val's tokens occur in train with the {n} tokens before them (measured on "
            f"{windows:,} of {max(0, val_tokens - n):,} val tokens): the share a model could recall rather than "
            "predict")


def main(argv: list[str]) -> str:
    cfg = configurator.load(LeakConfig, argv)
    if not cfg.data_dir or cfg.ngram < 1:
        raise UserError("--data_dir=DIR is required (a prepared dataset's folder) and --ngram must be at least 1")
    line = leak_line(cfg.data_dir, cfg.ngram)
    print(line)
    return line


if __name__ == "__main__":
    process.run(main)
