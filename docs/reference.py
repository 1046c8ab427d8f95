"""modded-nanogpt's scripts beside ours on the same data (docs/results.md, the clean split's section): its input, a
folder prepared by data/*/prepare.py written as the data shards it reads, so that it trains and evaluates on the very
tokens ours does; and its output, its printed evaluations (each line prefixed with the seconds since launch) as a
metrics.jsonl that metrics.py reads beside our runs'.

    python docs/reference.py shards --data_dir=data/files --out=REF/data/fineweb10B
    python docs/reference.py metrics --log=STAMPED_LOG --out=RUN_DIR

Its shard format: a header of 256 little-endian int32 (the magic 20240520, the version 1, the token count), then the
tokens as uint16. Its loader reads the shards in name order and each shard from the start, with no sampling, so
train's documents (ours end in the end-of-text token, in path order: one package after another) are shuffled with a
fixed seed first; val keeps its order, as the reference reads val's first tokens only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configurator import UserError
from datafiles import bin_path, read_meta

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
SHARD_TOKENS = 100_000_000  # the reference's own shards hold 100M tokens


def documents(tokens: np.ndarray, eot: int) -> list[np.ndarray]:
    """tokens cut after each end-of-text token (a last piece without one is a document too)."""
    ends = np.flatnonzero(tokens == eot) + 1
    return [piece for piece in np.split(tokens, ends) if len(piece)]


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, VERSION, len(tokens)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())
    os.replace(temporary, path)


def convert(data_dir: str, out: Path, seed: int = 0, shard_tokens: int = SHARD_TOKENS) -> dict[str, int]:
    """The shards fineweb_{train,val}_NNNNNN.bin in out; returns each split's token count."""
    meta = read_meta(data_dir)
    if meta["vocab_size"] > 2**16 or meta["eot_id"] is None:
        raise UserError(f"{data_dir}: the reference's shards hold uint16 ids of documents that end in an end-of-text "
                        f"token; this vocabulary has {meta['vocab_size']} ids, end-of-text {meta['eot_id']}")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "val"):
        tokens = np.memmap(bin_path(data_dir, split), dtype=meta["dtype"], mode="r")
        if split == "train":
            docs = documents(np.asarray(tokens), meta["eot_id"])
            order = np.random.default_rng(seed).permutation(len(docs))
            tokens = np.concatenate([docs[i] for i in order])
        for n, start in enumerate(range(0, len(tokens), shard_tokens), start=1):
            write_shard(out / f"fineweb_{split}_{n:06d}.bin", np.asarray(tokens[start:start + shard_tokens]))
        counts[split] = len(tokens)
    return counts


# '  197.4 step:200/200 val_loss:1.72958 train_time:159.765s step_avg:593.98ms': the stamp, then its evaluation line
EVALUATION = re.compile(r"^ *([\d.]+) step:(\d+)/\d+ val_loss:([\d.]+|nan|inf) train_time:([\d.]+)s", re.M)


def metrics_rows(log: str) -> list[dict]:
    """Its evaluations after the first step as metrics.jsonl rows (ours evaluate from the first interval on): the
    step, the val loss, the seconds since launch (ours count from launch too) and its own training clock (which
    stops while it evaluates)."""
    rows = [{"kind": "eval", "iter": int(step), "val_loss": float(loss) if loss[0].isdigit() else loss,
             "seconds": float(stamp), "train_seconds": float(train)}
            for stamp, step, loss, train in EVALUATION.findall(log) if int(step) > 0]
    if not rows:
        raise UserError("the log holds no evaluation line of the form 'SECONDS step:S/N val_loss:V train_time:Ts'")
    return rows


def write_metrics(log: Path, out: Path) -> int:
    rows = metrics_rows(log.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def main(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shards = commands.add_parser("shards", help="a prepared folder as the reference's data shards")
    shards.add_argument("--data_dir", required=True, help="a folder with train.bin, val.bin and meta.json")
    shards.add_argument("--out", required=True, type=Path, help="the folder for the shards")
    shards.add_argument("--seed", type=int, default=0, help="the shuffle of train's documents")
    rows = commands.add_parser("metrics", help="the reference's stamped log as a metrics.jsonl")
    rows.add_argument("--log", required=True, type=Path, help="its output, each line prefixed with the seconds")
    rows.add_argument("--out", required=True, type=Path, help="the run folder for metrics.jsonl")
    args = parser.parse_args(argv)
    try:
        if args.command == "shards":
            counts = convert(args.data_dir, args.out, args.seed)
            return f"wrote {counts['train']:,} train and {counts['val']:,} val tokens to {args.out}"
        return f"wrote {write_metrics(args.log, args.out)} evaluations to {args.out / 'metrics.jsonl'}"
    except (UserError, OSError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    print(main(sys.argv[1:]))
