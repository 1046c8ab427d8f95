"""Your own text: a folder of files, one file a document, with GPT-2's BPE into train.bin / val.bin and meta.json.

    python data/files/prepare.py --input=DIR --glob='*.py' [--out_dir=data/files] [--num_proc=N] [--val_per_mille=5]
    python train.py config/train_gpt2.py --dataset=files

Every file under DIR (at any depth, hidden ones included) whose path matches the glob is one document, followed
by an end-of-text token; empty files are skipped. A file that is not valid UTF-8 is still used, its bad bytes
decoded as U+FFFD, and the end says how many such files there were.

The val split is a pure function of each file's path relative to DIR: a file is in val when the first 8 bytes of
blake2b('/'-separated relative path, UTF-8), a little-endian integer over 2**64, fall below val_per_mille / 1000.
So it is the same on every machine and a file never changes split when others are added or removed. When that puts
no file in val (a small folder), the lowest-hashed file is held out instead, and the script says so: the same rule
with the threshold raised just enough to take one file (a file added with a lower hash then takes its place). At
least 2 files are needed, and a split that would put every file in val is refused.

Worker processes tokenize chunks of files (~1 MB each, a few chunks per worker in flight), and the tokens go to
temporary files beside train.bin / val.bin in sorted path order as they come, so memory stays bounded whatever
the folder's size. Only when both are complete, and meta.json's after them, are they renamed over train.bin,
val.bin and meta.json (datafiles.staged); on any failure the temporaries are removed and the old files are left
as they were.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
import configurator
import datafiles
import process
import tokenizer

CHUNK_BYTES = 1 << 20  # a worker's task: consecutive files up to about this much text
IN_FLIGHT = 4  # chunks queued per worker: keeps every worker busy, bounds what waits in memory


@dataclass
class Settings:
    """Tokenize a folder of your own text files with GPT-2's BPE, one file a document."""

    input: str = ""  # the folder to read, recursively (required)
    glob: str = "*.txt"  # which files in it: a pathlib pattern matched at any depth ('*.py', 'docs/*.md')
    out_dir: str = str(Path(__file__).resolve().parent)  # where train.bin, val.bin, meta.json go
    num_proc: int = os.cpu_count() or 1  # tokenizer worker processes
    val_per_mille: float = 5.0  # files per thousand held out for val.bin, chosen by a hash of each path


@dataclass
class Counts:
    documents: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    empty: int = 0  # files skipped for holding nothing
    not_utf8: int = 0  # files decoded with U+FFFD for their bad bytes


def list_files(root: str, pattern: str) -> tuple[list[tuple[str, int]], int]:
    """The non-empty files under `root` matching `pattern` as (path relative to root, '/'-separated; size),
    sorted by path, and the number of empty ones left out."""
    if not root:
        raise configurator.UserError("--input=DIR is required: the folder of text files to prepare")
    if not os.path.isdir(root):
        raise configurator.UserError(f"--input: no such folder {root}")
    try:
        paths = [p for p in Path(root).rglob(pattern) if p.is_file()]
    except (ValueError, NotImplementedError) as e:  # '' or an absolute pattern
        raise configurator.UserError(f"--glob={pattern!r} is not a relative pattern: {e}") from None
    sized = sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in paths)
    files = [(rel, size) for rel, size in sized if size > 0]
    if not files:
        empty = f" ({len(sized)} empty ones skipped)" if sized else ""
        raise configurator.UserError(f"no file under {root} matches --glob={pattern!r}{empty}")
    return files, len(sized) - len(files)


def path_hash(rel: str) -> int:
    """Where the file at `rel` (relative to the input folder, '/'-separated) falls in [0, 2**64): blake2b's first
    8 bytes of the path, little-endian."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def in_val(rel: str, val_per_mille: float) -> bool:
    """Whether the file at `rel` falls below the val threshold, val_per_mille / 1000 of the hash range."""
    return path_hash(rel) / 2**64 * 1000 < val_per_mille


def val_files(rels: list[str], val_per_mille: float) -> tuple[set[str], bool]:
    """The files held out for val, and whether the threshold gave none so that the lowest-hashed file was taken:
    a pure function of the paths, so the split is reproducible, and unchanged wherever the threshold gives one."""
    if len(rels) < 2:
        raise configurator.UserError(f"only {len(rels)} file to prepare, and at least 2 are needed (one for train, "
                                     "one for val): add files to --input or widen --glob")
    val = {rel for rel in rels if in_val(rel, val_per_mille)}
    fallback = not val
    if fallback:  # a small folder: raise the threshold just past the lowest hash rather than refuse
        lowest = min(map(path_hash, rels))
        val = {rel for rel in rels if path_hash(rel) == lowest}
    if len(val) == len(rels):
        raise configurator.UserError(f"the train split would be empty: {len(val)} of {len(rels)} files fall in val "
                                     f"at --val_per_mille={val_per_mille:g}; choose a lower --val_per_mille")
    return val, fallback


def refuse_emptied_split(counts: Counts) -> None:
    """After tokenizing: a split chosen non-empty can still end empty when its files were emptied since they were
    listed; a new run lists them again and chooses by the same rule among the files left."""
    for split, n in counts.documents.items():
        if n == 0:
            raise configurator.UserError(f"the {split} split came out empty: its files were emptied after they were "
                                         "listed; run again")


def chunked(files: list[tuple[str, int]]) -> list[list[str]]:
    """Consecutive files grouped into tasks of about CHUNK_BYTES (a larger file is a task of its own)."""
    chunks: list[list[str]] = [[]]
    size = 0
    for rel, n in files:
        if chunks[-1] and size + n > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(rel)
        size += n
    return chunks


def encode_files(root: str, dtype: str, rels: list[str]) -> list[tuple[np.ndarray | None, bool]]:
    """Runs in the worker processes: for each file, its ids followed by end-of-text (None when the file has become
    empty) and whether it was not valid UTF-8."""
    enc = tokenizer.gpt2_encoding()
    out = []
    for rel in rels:
        path = os.path.join(root, rel)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise configurator.UserError(f"cannot read {path}: {e.strerror}") from None
        try:
            text = data.decode("utf-8")
            not_utf8 = False
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            not_utf8 = True
        ids = np.array([*enc.encode_ordinary(text), tokenizer.GPT2_EOT], dtype=dtype) if text else None
        out.append((ids, not_utf8))
    return out


def in_order(pool: multiprocessing.pool.Pool | None, work: Callable, tasks: Iterable, window: int) -> Iterator:
    """work(task) for each task, in order: in `pool` with at most `window` tasks in flight, or here when pool is
    None. (Pool.imap would queue every task at once and hold every finished result behind a slow one.)"""
    if pool is None:
        yield from map(work, tasks)
        return
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(work, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def tokenize_into(root: str, files: list[tuple[str, int]], val: set[str], dtype: str, num_proc: int,
                  outs: dict[str, BinaryIO]) -> Counts:
    """Append each file's tokens to outs['val'] when it is in `val`, else outs['train'], in sorted path order, with
    a progress bar."""
    split = {rel: "val" if rel in val else "train" for rel, _ in files}
    chunks = chunked(files)
    num_proc = min(num_proc, len(chunks))
    work = functools.partial(encode_files, root, dtype)
    counts = Counts()
    # workers ignore Ctrl-C: the parent handles it, and leaving the `with` terminates them
    workers = multiprocessing.Pool(num_proc, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) \
        if num_proc > 1 else contextlib.nullcontext()
    with workers as pool, tqdm(total=len(files), unit="file", desc="tokenizing") as bar:
        for chunk, results in zip(chunks, in_order(pool, work, chunks, IN_FLIGHT * num_proc)):
            for rel, (ids, not_utf8) in zip(chunk, results):
                counts.not_utf8 += not_utf8
                if ids is None:
                    counts.empty += 1
                    continue
                outs[split[rel]].write(ids.tobytes())
                counts.documents[split[rel]] += 1
                counts.tokens[split[rel]] += len(ids)
            bar.update(len(chunk))
    return counts


def write_dataset(args: Settings, files: list[tuple[str, int]], val: set[str], meta: dict) -> Counts:
    """Tokenize into temporary files beside the outputs, renamed into place when all are complete
    (datafiles.staged)."""
    with datafiles.staged(args.out_dir) as tmp:
        with open(tmp["train.bin"], "wb") as train_out, open(tmp["val.bin"], "wb") as val_out:
            counts = tokenize_into(args.input, files, val, meta["dtype"], args.num_proc,
                                   {"train": train_out, "val": val_out})
        refuse_emptied_split(counts)
        datafiles.dump_meta(meta, tmp["meta.json"])
    return counts


def main(argv: list[str]) -> None:
    args = configurator.load(Settings, argv)
    process.children_end_with_their_parent()  # no worker outlives a Ctrl-C
    if args.num_proc < 1:
        raise configurator.UserError(f"--num_proc must be 1 or more, got {args.num_proc}")
    files, n_empty = list_files(args.input, args.glob)
    val, fallback = val_files([rel for rel, _ in files], args.val_per_mille)
    if fallback:
        print(f"val: {len(val)} of {len(files)} files (none falls in val at --val_per_mille={args.val_per_mille:g}; "
              "the lowest-hashed file is held out)")
    vocab_size = tokenizer.gpt2_encoding().n_vocab
    source = f"files under {args.input} matching {args.glob!r}"
    meta = {"tokenizer": "gpt2", "vocab_size": vocab_size, "dtype": datafiles.dtype_for_vocab(vocab_size),
            "eot_id": tokenizer.GPT2_EOT, "source": source}
    datafiles.check_meta(meta)
    counts = write_dataset(args, files, val, meta)
    for split in ("train", "val"):
        print(f"{split}: {counts.documents[split]:,} documents, {counts.tokens[split]:,} tokens")
    print(f"skipped {n_empty + counts.empty:,} empty files; {counts.not_utf8:,} files were not UTF-8 "
          "(their bad bytes decoded as U+FFFD)")
    print(f"source: {source}; wrote train.bin, val.bin, meta.json to {args.out_dir}")


if __name__ == "__main__":
    process.run(main)
