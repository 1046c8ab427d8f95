"""Your own text: a folder of files, one file a document, with GPT-2's BPE into train.bin / val.bin and meta.json.

    python data/files/prepare.py --input=DIR --glob='*.py' [--out_dir=data/files] [--num_proc=N]
    python data/files/prepare.py --input=DIR --glob='*.py' --val_tokens=1048576 --dedup=near
    python train.py config/train_gpt2.py --dataset=files

Every file under DIR (at any depth, hidden ones included) whose path matches the glob is one document, followed
by an end-of-text token; empty files are skipped. A file that is not valid UTF-8 is still used, its bad bytes
decoded as U+FFFD, and the end says how many such files there were.

Duplicates go first (dedup): a file whose bytes equal an earlier file's (in path order) is dropped, so a library
vendored twice, or one file copied into several packages, is read once and can never sit in train and val both.
With dedup=near, a file whose byte 8-grams overlap an earlier kept file's by near_threshold or more (Jaccard
similarity, estimated by MinHash over 128 hashes, candidates found by locality-sensitive hashing in 16 bands of 8)
goes too: another version of the same file.

The val split holds whole groups (split_by): with `dir`, every file under one top-level folder of DIR (a package, a
repository, a book) falls on one side, so val is text from sources never trained on; with `file`, each file is its
own group. Groups are ranked by blake2b('/'-separated group path, UTF-8) with an 8-byte digest (digest_size=8), read
as a little-endian integer, the lowest first, and val takes them in that order until it holds val_per_mille / 1000
of the data's bytes, or, with val_tokens, that many tokens. A group bigger than half that target is passed over (it
trains): it would be most of val, one source's loss, and a large share of train lost; where every group is that big,
val is the smallest. The last group always trains. So the split is the same on every machine, whatever the number
of processes.

Then val is decontaminated: a val document of which more than `decontaminate` (default a fifth) of the tokens could
be copied from train, each with the 32 tokens before it found verbatim there, is dropped (another version of a
library that a package vendors, say, which whole-file similarity misses). The end says how many documents and
tokens val holds, the share of its largest document and group, what decontamination dropped, and how much of val
could still be copied from train (datafiles.leak_share).

Worker processes fingerprint and tokenize chunks of files (~1 MB each, a few chunks per worker in flight). Val's
tokens (a small share) are held in memory until train's, in path order, have gone to a temporary file beside
train.bin as they came, so memory stays bounded whatever the folder's size; then val's go to theirs. Only when both
are complete, and meta.json's after them, are they renamed over train.bin, val.bin and meta.json
(datafiles.staged); on any failure the temporaries are removed and the old files are left as they were.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)

import numpy as np
from tqdm import tqdm

import configurator
import datafiles
import process
import tokenizer

CHUNK_BYTES = 1 << 20  # a worker's task: consecutive files up to about this much text
IN_FLIGHT = 4  # chunks queued per worker: keeps every worker busy, bounds what waits in memory
DEDUP = ("exact", "near", "none")
SPLIT_BY = ("dir", "file")
MINHASH = 128  # hashes in a file's MinHash signature
BANDS = 16  # locality-sensitive hashing: 16 bands of 8 hashes; two files share a band's bucket with probability
# s**8 per band at Jaccard similarity s: a pair at 0.8 is a candidate with probability 1 - (1 - 0.8**8)**16 = 0.93
SHINGLE = 8  # bytes per shingle of near-duplicate detection
SHINGLE_BLOCK = 1 << 14  # shingles hashed at once by all MINHASH functions: a (MINHASH, SHINGLE_BLOCK) buffer


@dataclass
class Settings:
    """Tokenize a folder of your own text files with GPT-2's BPE, one file a document; duplicates removed, and val
    held out in whole groups (a top-level folder each) so that it is text never trained on."""

    input: str = ""  # the folder to read, recursively (required)
    glob: str = "*.txt"  # which files in it: a pathlib pattern matched at any depth ('*.py', 'docs/*.md')
    out_dir: str = str(Path(__file__).resolve().parent)  # where train.bin, val.bin, meta.json go
    num_proc: int = os.cpu_count() or 1  # tokenizer worker processes
    dedup: str = "exact"  # exact: a file with an earlier file's bytes is dropped | near: also one whose byte 8-grams
    # overlap an earlier kept file's by near_threshold or more | none
    near_threshold: float = 0.8  # dedup=near: the Jaccard similarity at which a later file is a near-duplicate
    split_by: str = "dir"  # dir: all files under one top-level folder of input on one side | file: each file alone
    val_per_mille: float = 5.0  # val's share of the data's bytes, in whole groups, the lowest-hashed first
    val_tokens: int = 0  # instead: whole groups, the lowest-hashed first, until val holds this many tokens
    leak_ngram: int = 32  # the leak check: a val token is copyable when it and its n predecessors occur in train
    decontaminate: float = 0.2  # a val document of which more than this share is copyable from train is dropped;
    # 1: none is


@dataclass
class Counts:
    documents: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    empty: int = 0  # files skipped for holding nothing
    not_utf8: int = 0  # files decoded with U+FFFD for their bad bytes
    largest: tuple[int, str] = (0, "")  # val's largest document: tokens, path
    groups: dict[str, int] = field(default_factory=dict)  # val's groups: tokens each
    contaminated: tuple[int, int] = (0, 0)  # val documents dropped as copies of train: documents, tokens
    leak_before: float | None = None  # the leak check's share before decontamination
    leak: str = ""  # the leak check's line, of val as written


def list_files(root: str, pattern: str) -> tuple[list[tuple[str, int]], int]:
    """The non-empty files under `root` matching `pattern` as (path relative to root, '/'-separated; size),
    sorted by path, and the number of empty ones left out. A folder that cannot be read is refused, not skipped,
    and so is a pattern that reaches outside root."""
    if not root:
        raise configurator.UserError("--input=DIR is required: the folder of text files to prepare")
    if not os.path.isdir(root):
        raise configurator.UserError(f"--input: no such folder {root}")
    if ".." in Path(pattern).parts:
        raise configurator.UserError(f"--glob={pattern!r} reaches outside --input: name files inside it")
    unreadable: list[OSError] = []
    for _ in os.walk(root, onerror=unreadable.append):  # rglob would skip them without a word
        pass
    if unreadable:
        e = unreadable[0]
        raise configurator.UserError(f"cannot read {e.filename}: {e.strerror} ({len(unreadable)} folder(s) under "
                                     f"{root} cannot be read): give access or choose another --input")
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


def check_settings(args: Settings) -> None:
    for name, allowed in (("dedup", DEDUP), ("split_by", SPLIT_BY)):
        if getattr(args, name) not in allowed:
            raise configurator.UserError(f"--{name} must be one of {', '.join(allowed)}, got '{getattr(args, name)}'")
    if args.num_proc < 1 or args.val_tokens < 0 or args.leak_ngram < 0:
        raise configurator.UserError("--num_proc must be at least 1, --val_tokens and --leak_ngram at least 0")
    if not 0 < args.decontaminate <= 1:
        raise configurator.UserError(f"--decontaminate must be in (0, 1] (1: keep every val document), got "
                                     f"{args.decontaminate:g}")
    if not 0 < args.val_per_mille <= 500 or not 0 < args.near_threshold <= 1:
        raise configurator.UserError(f"--val_per_mille must be in (0, 500] (train keeps at least half) and "
                                     f"--near_threshold in (0, 1], got {args.val_per_mille:g} and "
                                     f"{args.near_threshold:g}")


# ----------------------------------------------------------------------------------------------------------------
# duplicates


def signature(data: bytes) -> np.ndarray:
    """A MinHash signature of data's byte 8-grams: for each of MINHASH hash functions, the least hash of any
    8-gram. Two signatures agree at a position with probability the Jaccard similarity of the two 8-gram sets."""
    # every shingle, in every file: a signature of a sample of one set and of all of another agree far less often
    # than the sets' similarity (a file sampled past a size limit missed its copy just under it)
    raw, k = np.frombuffer(data, dtype=np.uint8), min(SHINGLE, len(data))
    rng = np.random.default_rng(0)  # the same hash functions in every process
    a = rng.integers(1, 2**63, MINHASH, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, MINHASH, dtype=np.uint64)
    sig = np.full(MINHASH, np.iinfo(np.uint64).max, dtype=np.uint64)
    windows = len(raw) - k + 1
    buffer = np.empty((MINHASH, min(SHINGLE_BLOCK, windows)), dtype=np.uint64)  # in place: no temporaries
    with np.errstate(over="ignore"):
        for start in range(0, windows, SHINGLE_BLOCK):  # a slice of the file at a time: memory stays bounded
            part = datafiles.window_hashes(raw[start : start + SHINGLE_BLOCK + k - 1], k)
            hashed = buffer[:, : len(part)]
            np.multiply(a[:, None], part[None, :], out=hashed)
            hashed += b[:, None]
            np.minimum(sig, hashed.min(axis=1), out=sig)
    return sig


def fingerprint_files(root: str, near: bool, rels: list[str]) -> list[tuple[bytes, np.ndarray | None]]:
    """Runs in the worker processes: each file's content digest, and with `near` its MinHash signature."""
    out = []
    for rel in rels:
        data = read_file(root, rel)
        out.append((hashlib.blake2b(data, digest_size=16).digest(), signature(data) if near and data else None))
    return out


def duplicates(files: list[tuple[str, int]], fingerprints: Iterable[tuple[bytes, np.ndarray | None]],
               threshold: float) -> tuple[set[str], set[str]]:
    """The files to drop, in path order: (exact copies of an earlier file, near-duplicates of an earlier kept file),
    the latter only where signatures are given."""
    exact: set[str] = set()
    near: set[str] = set()
    seen: set[bytes] = set()
    buckets: list[dict[bytes, list[np.ndarray]]] = [{} for _ in range(BANDS)]
    rows = MINHASH // BANDS
    for (rel, _), (digest, sig) in zip(files, fingerprints):
        if digest in seen:
            exact.add(rel)
            continue
        seen.add(digest)
        if sig is None:
            continue
        keys = [sig[i * rows : (i + 1) * rows].tobytes() for i in range(BANDS)]
        candidates = (other for band, key in zip(buckets, keys) for other in band.get(key, ()))
        if any(np.mean(sig == other) >= threshold for other in candidates):
            near.add(rel)
            continue
        for band, key in zip(buckets, keys):
            band.setdefault(key, []).append(sig)
    return exact, near


# ----------------------------------------------------------------------------------------------------------------
# the split


def path_hash(rel: str) -> int:
    """Where the group at `rel` (relative to the input folder, '/'-separated) falls in [0, 2**64): the path's
    blake2b with an 8-byte digest, little-endian."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def group_of(rel: str, split_by: str) -> str:
    """The group a file falls in: its top-level folder (a file at the top is a group of its own), or itself."""
    return rel.split("/", 1)[0] if split_by == "dir" else rel


def ranked_groups(files: list[tuple[str, int]], split_by: str) -> list[list[tuple[str, int]]]:
    """The files by group, the groups the lowest-hashed first (val's candidates in order), files in path order."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for rel, size in files:
        groups.setdefault(group_of(rel, split_by), []).append((rel, size))
    if len(groups) < 2:
        raise configurator.UserError(f"the {len(files)} file(s) to prepare fall in {len(groups)} group at "
                                     f"--split_by={split_by}, and at least 2 are needed (one for train, one for "
                                     "val): add files or folders to --input, or use --split_by=file")
    return [groups[g] for g in sorted(groups, key=path_hash)]


def val_by_bytes(groups: list[list[tuple[str, int]]], per_mille: float) -> list[tuple[str, int]]:
    """The lowest-hashed groups until they hold per_mille / 1000 of all the bytes, passing over any group of more
    than half that (it would be most of val: one source's loss, and a big share of train lost) or one that would
    take val past half the data; where every group is that big, the smallest. Never every group."""
    total = sum(size for group in groups for _, size in group)
    target = per_mille / 1000 * total
    val: list[tuple[str, int]] = []
    taken = 0
    for group in groups[:-1]:
        size = sum(n for _, n in group)
        if size <= target / 2 and taken + size <= total / 2:
            val += group
            taken += size
            if taken >= target:
                break
    return val or min(groups[:-1], key=lambda group: sum(size for _, size in group))


# ----------------------------------------------------------------------------------------------------------------
# tokenizing and writing


def read_file(root: str, rel: str) -> bytes:
    path = os.path.join(root, rel)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise configurator.UserError(f"cannot read {path}: {e.strerror}") from None


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
    return chunks if chunks[0] else []


def encode_files(root: str, dtype: str, rels: list[str]) -> list[tuple[np.ndarray | None, bool]]:
    """Runs in the worker processes: for each file, its ids followed by end-of-text (None when the file has become
    empty) and whether it was not valid UTF-8."""
    enc = tokenizer.gpt2_encoding()
    out = []
    for rel in rels:
        data = read_file(root, rel)
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


@dataclass
class Workers:
    """The worker processes (none: this one) and what they run: each file's fingerprint, or its tokens."""

    num_proc: int
    pool: multiprocessing.pool.Pool | None

    def each(self, work: Callable[[list[str]], list], files: list[tuple[str, int]],
             desc: str) -> Iterator[tuple[str, Any]]:
        """(path, work's result for it) for each file, in the order given, with a progress bar; work takes a
        chunk's paths and returns a result for each (a module-level function, or a partial of one: it travels to
        the workers)."""
        chunks = chunked(files)
        with tqdm(total=len(files), unit="file", desc=desc) as bar:
            for chunk, results in zip(chunks, in_order(self.pool, work, chunks, IN_FLIGHT * self.num_proc)):
                yield from zip(chunk, results)
                bar.update(len(chunk))


def write_split(split: str, docs: Iterable[tuple[str, tuple[np.ndarray | None, bool]]], out: BinaryIO,
                counts: Counts, split_by: str) -> None:
    """Append each document's tokens to out, counted as `split`'s (val's largest document and groups too)."""
    for rel, (ids, not_utf8) in docs:
        counts.not_utf8 += not_utf8
        if ids is None:
            counts.empty += 1
            continue
        out.write(ids.tobytes())
        counts.documents[split] += 1
        counts.tokens[split] += len(ids)
        if split == "val":
            counts.largest = max(counts.largest, (len(ids), rel))
            group = group_of(rel, split_by)
            counts.groups[group] = counts.groups.get(group, 0) + len(ids)


def val_docs(args: Settings, workers: Workers, groups: list[list[tuple[str, int]]], dtype: str
             ) -> Iterator[tuple[str, tuple[np.ndarray | None, bool]]]:
    """Val's documents, its groups in rank order: by bytes (val_by_bytes), or with val_tokens the lowest-hashed
    groups of at most half val_tokens each (a bigger one trains, as in val_by_bytes; where every group is that big,
    the smallest) until val holds val_tokens. A group is held back until it is whole, to be weighed."""
    encode = functools.partial(encode_files, args.input, dtype)
    if not args.val_tokens:
        yield from workers.each(encode, val_by_bytes(groups, args.val_per_mille), "tokenizing val")
        return
    cap, tokens = args.val_tokens / 2, 0
    half = sum(size for group in groups for _, size in group) / 2  # val's bytes never pass half the data's
    candidates, taken = [], 0
    for group in groups[:-1]:
        size = sum(n for _, n in group)
        if taken + size <= half:
            candidates += group
            taken += size
    held: list[tuple[str, tuple[np.ndarray | None, bool]]] = []  # the current group's documents so far
    held_tokens, current, too_big = 0, None, False
    # lazily: a list would tokenize, and hold, every group but the last before val takes the first
    for rel, result in itertools.chain(workers.each(encode, candidates, "tokenizing val"), [("", (None, False))]):
        group = group_of(rel, args.split_by) if rel else None
        if group != current:  # the current group is whole: take it, unless too big
            if current is not None and not too_big:
                yield from held
                tokens += held_tokens
                if tokens >= args.val_tokens:
                    return
            held, held_tokens, current, too_big = [], 0, group, False
        if rel and not too_big:
            held.append((rel, result))
            held_tokens += 0 if result[0] is None else len(result[0])
            too_big = held_tokens > cap
            if too_big:
                held = []  # it trains: let its memory go
    if tokens and tokens < args.val_tokens:
        raise configurator.UserError(f"--val_tokens={args.val_tokens:,}: val holds only {tokens:,} tokens in groups "
                                     "that leave train at least half the data: ask for fewer")
    if not tokens:  # every group is bigger than half val_tokens: the smallest
        smallest = min(groups[:-1], key=lambda group: sum(size for _, size in group))
        yield from workers.each(encode, smallest, "tokenizing val")


def write_dataset(args: Settings, files: list[tuple[str, int]], groups: list[list[tuple[str, int]]],
                  meta: dict) -> Counts:
    """Tokenize val's groups, then every other file in path order, into temporary files beside the outputs,
    renamed into place when all are complete (datafiles.staged)."""
    counts = Counts()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(datafiles.staged(args.out_dir))
        num_proc = min(args.num_proc, max(1, len(chunked(files))))
        # workers ignore Ctrl-C: the parent handles it, and leaving the `with` terminates them
        pool = stack.enter_context(multiprocessing.Pool(num_proc, initializer=signal.signal, initargs=(
            signal.SIGINT, signal.SIG_IGN))) if num_proc > 1 else None
        workers = Workers(num_proc, pool)
        val = list(val_docs(args, workers, groups, meta["dtype"]))  # val is small: held until train is written
        chosen = {rel for rel, _ in val}
        train = [(rel, size) for rel, size in files if rel not in chosen]
        encode = functools.partial(encode_files, args.input, meta["dtype"])
        with open(tmp["train.bin"], "wb") as out:
            write_split("train", workers.each(encode, train, "tokenizing train"), out, counts, args.split_by)
        n = args.leak_ngram or 32
        windows = datafiles.TrainWindows(np.memmap(tmp["train.bin"], dtype=meta["dtype"], mode="r"), n) \
            if counts.tokens["train"] and (args.decontaminate < 1 or args.leak_ngram) else None
        if windows is not None and args.decontaminate < 1:
            val = decontaminated(val, windows, args, counts)
        with open(tmp["val.bin"], "wb") as out:
            write_split("val", val, out, counts, args.split_by)
        if windows is not None and args.leak_ngram:  # the leak check of what val.bin now holds, train's windows
            docs = [ids for _, (ids, _) in val if ids is not None]  # hashed once for both
            ids = np.concatenate(docs) if docs else np.empty(0, dtype=meta["dtype"])
            hits, asked = windows.copied(ids)
            counts.leak = datafiles.leak_text(hits / asked if asked else 0.0, asked, len(ids), n)
        refuse_emptied_split(counts)
        datafiles.dump_meta(meta, tmp["meta.json"])
    return counts


def decontaminated(val: list[tuple[str, tuple[np.ndarray | None, bool]]], windows: datafiles.TrainWindows,
                   args: Settings, counts: Counts) -> list[tuple[str, tuple[np.ndarray | None, bool]]]:
    """Val less the documents of which more than args.decontaminate could be copied from train (a token and the
    leak_ngram before it found verbatim there: another version of a vendored library, say, that dedup's whole-file
    similarity missed): counted in counts.contaminated."""
    docs = [ids for _, (ids, _) in val if ids is not None]
    hits, asked = windows.copied(np.concatenate(docs)) if docs else (0, 0)
    counts.leak_before = hits / asked if asked else 0.0
    kept = []
    for rel, (ids, not_utf8) in val:
        hits, asked = windows.copied(ids) if ids is not None else (0, 0)
        if asked and hits / asked > args.decontaminate:
            counts.contaminated = (counts.contaminated[0] + 1, counts.contaminated[1] + len(ids))
            continue
        kept.append((rel, (ids, not_utf8)))
    return kept


def refuse_emptied_split(counts: Counts) -> None:
    """After tokenizing: a split chosen non-empty can still end empty when its files were emptied since they were
    listed; a new run lists them again and chooses by the same rule among the files left."""
    for split, n in counts.documents.items():
        if n == 0 and split == "val" and counts.contaminated[0]:
            raise configurator.UserError(f"the val split came out empty: all {counts.contaminated[0]:,} of its "
                                         "documents could be copied from train (--decontaminate): hold out more "
                                         "(--val_tokens, --val_per_mille), or keep them with --decontaminate=1")
        if n == 0:
            raise configurator.UserError(f"the {split} split came out empty: its files were emptied after they were "
                                         "listed; run again")


def deduplicated(args: Settings, files: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], str]:
    """The files less duplicates (dedup), and a line saying what went."""
    if args.dedup == "none":
        return files, "dedup: none (--dedup=none)"
    num_proc = min(args.num_proc, max(1, len(chunked(files))))
    near = args.dedup == "near"
    with (multiprocessing.Pool(num_proc, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
          if num_proc > 1 else contextlib.nullcontext()) as pool:
        workers = Workers(num_proc, pool)
        prints = (result for _, result in workers.each(functools.partial(fingerprint_files, args.input, near), files,
                                                       "fingerprinting"))
        exact, similar = duplicates(files, prints, args.near_threshold)
    dropped = exact | similar
    size = sum(n for rel, n in files if rel in dropped)
    kept = [(rel, n) for rel, n in files if rel not in dropped]
    near_text = f", {len(similar):,} near-duplicates (Jaccard >= {args.near_threshold:g})" if near else ""
    return kept, (f"dedup: dropped {len(exact):,} exact copies{near_text}: {len(dropped):,} files, {size:,} bytes; "
                  f"{len(kept):,} files left")


def summary(counts: Counts, args: Settings) -> list[str]:
    val_tokens = max(1, counts.tokens["val"])
    (big, path), top = counts.largest, max(counts.groups.items(), key=lambda kv: kv[1], default=("", 0))
    lines = [f"{split}: {counts.documents[split]:,} documents, {counts.tokens[split]:,} tokens"
             for split in ("train", "val")]
    lines.append(f"val: {len(counts.groups):,} group(s) by --split_by={args.split_by}; its largest document {path} "
                 f"holds {big / val_tokens:.1%} of its tokens, its largest group {top[0]} {top[1] / val_tokens:.1%}")
    if args.decontaminate < 1:
        before = f"; before that {counts.leak_before:.1%} of val's tokens could be" if counts.leak_before is not None \
            else ""
        lines.append(f"val: dropped {counts.contaminated[0]:,} documents ({counts.contaminated[1]:,} tokens) of which "
                     f"more than {args.decontaminate:.0%} could be copied from train (--decontaminate){before}")
    if big / val_tokens > 0.1:
        lines.append("warning: one document holds over a tenth of val: its loss swings with that file; hold out "
                     "more (--val_tokens, --val_per_mille)")
    return lines


def main(argv: list[str]) -> None:
    args = configurator.load(Settings, argv)
    process.children_end_with_their_parent()  # no worker outlives a Ctrl-C
    check_settings(args)
    listed, n_empty = list_files(args.input, args.glob)
    files, dedup_line = deduplicated(args, listed)
    groups = ranked_groups(files, args.split_by)
    vocab_size = tokenizer.gpt2_encoding().n_vocab
    source = f"files under {args.input} matching {args.glob!r}"
    meta = {"tokenizer": "gpt2", "vocab_size": vocab_size, "dtype": datafiles.dtype_for_vocab(vocab_size),
            "eot_id": tokenizer.GPT2_EOT, "source": source}
    datafiles.check_meta(meta)
    counts = write_dataset(args, files, groups, meta)
    print(dedup_line)
    print("\n".join(summary(counts, args)))
    print(f"skipped {n_empty + counts.empty:,} empty files; {counts.not_utf8:,} files were not UTF-8 "
          "(their bad bytes decoded as U+FFFD)")
    if counts.leak:
        print(counts.leak)
    print(f"source: {source}; wrote train.bin, val.bin, meta.json to {args.out_dir}")


if __name__ == "__main__":
    process.run(main)
