"""OpenWebText (or local documents) with GPT-2's BPE into train.bin / val.bin and meta.json, in bounded memory.

    python data/openwebtext/prepare.py [--input='corpus/*.jsonl'] # default: hub "openwebtext" (needs internet)

`num_proc` workers tokenize into Arrow files on disk (HF_DATASETS_CACHE); each split is then copied in batches
into a np.memmap of its final length, with an end-of-text token after every document.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)

import numpy as np
from tqdm import tqdm

try:  # requirements-extra.txt; main() says so when they are missing
    import datasets
    import pyarrow.compute as pc
except ModuleNotFoundError:
    datasets = pc = None

import configurator
import datafiles
import process
import tokenizer

HUB_DATASET = "openwebtext"
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # datasets' local builders


@dataclass
class Settings:
    """Tokenize OpenWebText or local documents with GPT-2's BPE."""

    input: str = ""  # '' = the hub dataset, else PATH[,PATH...]: files, globs, folders (a .txt file = a document)
    out_dir: str = str(Path(__file__).resolve().parent)  # where train.bin, val.bin, meta.json go
    num_proc: int = max(1, (os.cpu_count() or 2) // 2)  # tokenizer worker processes
    val_fraction: float = 0.0005  # share of documents held out for val.bin (at least one, never all)
    seed: int = 2357  # of the train/val shuffle


def local_files(spec: str) -> tuple[str, list[str]]:
    """--input's comma-separated paths, globs and folders -> (datasets builder name, sorted files)."""
    files: list[str] = []
    for pattern in filter(None, (p.strip() for p in spec.split(","))):
        isdir = os.path.isdir(pattern)
        found = [str(p) for p in Path(pattern).iterdir() if p.suffix in BUILDERS] if isdir else glob.glob(pattern)
        if not found:
            raise configurator.UserError(f"--input: {'no data files in' if isdir else 'no such file'} {pattern}")
        files += sorted(found)
    kinds = {BUILDERS.get(Path(f).suffix, "?") for f in files}
    if "?" in kinds or len(kinds) != 1:
        got = ", ".join(sorted({Path(f).suffix or Path(f).name for f in files})) or "nothing"
        raise configurator.UserError(f"--input takes .txt, .jsonl/.json or .parquet files of one kind, got {got}")
    return kinds.pop(), files


def load_documents(spec: str, num_proc: int) -> datasets.Dataset:
    """A datasets.Dataset with one `text` column, from the hub (spec '') or local files."""
    if not spec:
        try:
            return datasets.load_dataset(HUB_DATASET, split="train", num_proc=num_proc).select_columns(["text"])
        except (OSError, datasets.exceptions.DatasetsError) as e:  # offline, hub down, dataset renamed
            raise configurator.UserError(f"could not load '{HUB_DATASET}' from the hub ({str(e).strip()[:200]}); "
                                         "pass local files with --input=PATH") from None
    builder, files = local_files(spec)
    extra = {"sample_by": "document"} if builder == "text" else {}  # one .txt file = one document
    try:
        dset = datasets.load_dataset(builder, data_files=files, split="train", num_proc=num_proc, **extra)
    except datasets.exceptions.DatasetsError as e:
        raise configurator.UserError(f"could not read --input {spec}: {e.__cause__ or e}") from None
    except StopIteration:  # datasets' json reader on a file with no records
        raise configurator.UserError(f"--input {spec} holds no documents") from None
    if "text" not in dset.column_names:
        raise configurator.UserError(f"--input {spec} has no 'text' field (columns: {', '.join(dset.column_names)})")
    kind = getattr(dset.features["text"], "dtype", type(dset.features["text"]).__name__)
    if kind not in ("string", "large_string"):
        raise configurator.UserError(f"--input {spec}: its 'text' field holds {kind}, not text")
    return dset.select_columns(["text"])


def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
    """Runs in the worker processes: each document's ids followed by end-of-text."""
    enc = tokenizer.gpt2_encoding()
    return {"ids": [[*enc.encode_ordinary(text), tokenizer.GPT2_EOT] for text in batch["text"]]}


def write_split(dset: datasets.Dataset, path: str, dtype: str) -> int:
    """Copy the tokenized documents into one flat memmap at `path`, 1024 documents (~1M tokens) at a time."""
    total = pc.sum(pc.list_value_length(dset.with_format("arrow")["ids"])).as_py()  # reads only the offsets
    out = np.memmap(path, dtype=dtype, mode="w+", shape=(total,))
    pos = 0
    with tqdm(total=total, unit="tok", unit_scale=True, desc=f"writing {os.path.basename(path)}") as bar:
        for table in dset.with_format("arrow").iter(batch_size=1024):
            chunk = pc.list_flatten(table["ids"]).to_numpy()  # (tokens in batch,), already `dtype`
            out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            bar.update(len(chunk))
    out.flush()
    return pos


def main(argv: list[str]) -> None:
    args = configurator.load(Settings, argv)
    process.children_end_with_their_parent()  # no worker outlives a Ctrl-C
    if datasets is None:
        configurator.require("datasets", "data/openwebtext/prepare.py")
    docs = load_documents(args.input, args.num_proc)
    source = f"local {args.input}" if args.input else f"hub {HUB_DATASET}"
    if len(docs) < 2:
        raise configurator.UserError(f"{source} has {len(docs)} document(s): need 2 or more to hold one out for val")
    n_val = min(len(docs) - 1, max(1, round(len(docs) * args.val_fraction)))
    splits = docs.train_test_split(test_size=n_val, seed=args.seed, shuffle=True)
    vocab_size = tokenizer.gpt2_encoding().n_vocab
    dtype = datafiles.dtype_for_vocab(vocab_size)  # stored as such in the Arrow cache too: 2 bytes a token, not 8
    features = datasets.Features({"ids": datasets.List(datasets.Value(dtype))})
    tokenized = splits.map(tokenize, batched=True, remove_columns=["text"], features=features,
                           num_proc=args.num_proc, desc="tokenizing")
    with datafiles.staged(args.out_dir) as tmp:  # the old files stay until all the new ones are complete
        for split, name in (("train", "train"), ("test", "val")):
            n = write_split(tokenized[split], tmp[f"{name}.bin"], dtype)
            print(f"{name}: {len(tokenized[split]):,} documents, {n:,} tokens")
        datafiles.dump_meta({"tokenizer": "gpt2", "vocab_size": vocab_size, "dtype": dtype,
                             "eot_id": tokenizer.GPT2_EOT, "source": source}, tmp["meta.json"])
    print(f"source: {source}; vocab size {vocab_size}; wrote train.bin, val.bin, meta.json to {args.out_dir}")


if __name__ == "__main__":
    process.run(main)
