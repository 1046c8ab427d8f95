"""Batches of token sequences read from a prepared token file (data/<name>/train.bin, val.bin): training's random
batches, each a pure function of (seed, index), and evaluation's fixed ones. train.py and bench.py read through
these.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from configurator import UserError
from model import round_up


class BatchSource(Protocol):
    """Anything that gives batch number k on a device: Batches, or bench.py's one fixed random batch."""

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]: ...


ORDERS = ("random", "shuffled")


class Batches:
    """Random sequences (x, y = x shifted by one) of a token file. Batch k is a pure function of (seed, k), so the
    sampler's whole state is the index of the next batch: resuming, or splitting batches across data-parallel ranks,
    gives exactly the batches an unbroken single process would see.

    The sequences form one stream; batch k is its sequences k * batch_size onwards. order="random" (nanoGPT's)
    starts each at a random token, drawn `group` at a time (group g is a function of (seed, g)); the group is the
    recipe's batch_size, so a run that splits its steps into other micro-batches (train.py's micro_batch) reads the
    same sequences, in the same order, as one that does not. order="shuffled" cuts the file into windows of
    block_size + 1 tokens (overlapping by one, each epoch from a random offset of its own) and reads them in a
    random order, each once an epoch: no sequence comes twice before every other has come (a short run on a small
    corpus sees more of it), sequence j a function of (seed, j).

    Rows are read with seek + fromfile from one open file handle: an np.memmap held for the whole run makes
    resident memory grow with every page touched, and reopening one per batch costs a mapping each time."""

    def __init__(self, path: str, dtype: str, block_size: int, batch_size: int, vocab_size: int, seed: int,
                 group: int | None = None, order: str = "random") -> None:
        if not os.path.isfile(path):
            raise UserError(f"{path} not found: run python {os.path.join(os.path.dirname(path), 'prepare.py')}")
        self.dtype = np.dtype(dtype)
        size = os.path.getsize(path)
        if size % self.dtype.itemsize:
            raise UserError(f"{path} is {size} bytes, not a whole number of {dtype} token ids: it is damaged, or its "
                            "meta.json names the wrong dtype")
        self.n_tokens = size // self.dtype.itemsize
        if self.n_tokens < block_size + 1:
            raise UserError(f"{path} has {self.n_tokens} tokens, fewer than block_size + 1 = {block_size + 1}")
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 (held for the run)
        self.block_size = block_size
        self.batch_size = batch_size
        self.group = group or batch_size
        self.vocab_size = vocab_size
        self.seed = seed
        self.order = order
        self.epoch: tuple[int, np.ndarray, int] = (-1, np.empty(0, dtype=np.int64), 0)  # order="shuffled": the
        # last epoch read, its window order and its offset
        if self.dtype == np.uint16 and wider_ids(path):
            raise UserError(f"{path} looks like uint32 token ids (every other uint16 is 0), but its meta.json says "
                            "uint16: prepare the data again, or set its dtype to uint32")
        highest = max_token(path, dtype, size, os.path.getmtime(path))
        if highest >= vocab_size:
            raise UserError(f"{path} holds token id {highest} >= vocab_size {vocab_size}: it was prepared for "
                            "another vocabulary")

    def read(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k on the CPU: x, y of shape (batch_size, block_size), int64."""
        if self.order == "shuffled":
            return self.rows(self.shuffled_starts(np.arange(k * self.batch_size, (k + 1) * self.batch_size)))
        first, G = k * self.batch_size, self.group
        groups = range(first // G, (first + self.batch_size - 1) // G + 1)
        starts = np.concatenate([np.random.default_rng((self.seed, g)).integers(0, self.n_tokens - self.block_size,
                                                                                size=G) for g in groups])
        return self.rows(starts[first - groups[0] * G:][:self.batch_size])

    def shuffled_starts(self, sequences: np.ndarray) -> np.ndarray:
        """The first token of each of these sequences of the stream (order="shuffled"): sequence j is window
        perm_e[j mod W] of epoch e = j // W, W windows of block_size tokens after the epoch's offset."""
        T = self.block_size
        windows = (self.n_tokens - 1) // T
        starts = np.empty(len(sequences), dtype=np.int64)
        for epoch in np.unique(sequences // windows):
            if self.epoch[0] != epoch:
                rng = np.random.default_rng((self.seed, int(epoch)))
                slack = self.n_tokens - 1 - windows * T  # tokens left over: the offset moves the cuts each epoch
                self.epoch = (int(epoch), rng.permutation(windows), int(rng.integers(0, slack + 1)))
            _, perm, offset = self.epoch
            chosen = sequences // windows == epoch
            starts[chosen] = perm[sequences[chosen] % windows] * T + offset
        return starts

    def rows(self, starts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y for the sequences that begin at these token offsets, one row each."""
        T = self.block_size
        rows = np.empty((len(starts), T + 1), dtype=np.int64)
        for row, start in zip(rows, starts):
            self.file.seek(int(start) * self.dtype.itemsize)
            ids = np.fromfile(self.file, dtype=self.dtype, count=T + 1)
            if len(ids) < T + 1:
                raise UserError(f"{self.path} is shorter than when the run began ({self.n_tokens} tokens): it was "
                                "replaced or truncated during the run")
            row[:] = ids
        data = torch.from_numpy(rows)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.read(k)
        if device.type == "cuda":  # pinned memory lets the copy overlap the GPU's work
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def wider_ids(path: str, sample: int = 4096) -> bool:
    """Whether a file read as uint16 looks like uint32 ids: every odd uint16 of its first `sample` zero (the high
    halves of small ids, little-endian) while the even ones are not. Real text never puts one token at every other
    position for thousands of tokens."""
    head = np.fromfile(path, dtype=np.uint16, count=sample)
    return len(head) >= 64 and not head[1::2].any() and bool(head[0::2].any())


class EvalBatches(Batches):
    """The evaluation's batches: non-overlapping sequences spread evenly over a token file, in order, at
    most max_batches batches of them (the whole file when it holds fewer). Every evaluation reads the same tokens,
    and a split that fits is measured exactly rather than sampled: random batches would move the val loss between
    evaluations by more than the gains being compared. The last batch is filled out to full size
    (one shape, so no recompilation) with rows whose targets are -1, which the loss ignores."""

    def __init__(self, path: str, dtype: str, block_size: int, batch_size: int, vocab_size: int,
                 max_batches: int, group: int | None = None) -> None:
        super().__init__(path, dtype, block_size, batch_size, vocab_size, seed=0, group=group)
        available = (self.n_tokens - 1) // block_size
        count = min(available, max_batches * self.group)  # max_batches of the recipe's batch, whatever the micro-batch
        self.starts = [i * available // count * block_size for i in range(count)]
        self.n_batches = round_up(count, batch_size) // batch_size

    def read(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.rows(self.starts[k * self.batch_size:(k + 1) * self.batch_size])
        missing = self.batch_size - len(x)
        if missing:
            x = torch.cat([x, x.new_zeros(missing, self.block_size)])
            y = torch.cat([y, y.new_full((missing, self.block_size), -1)])
        return x, y


@functools.lru_cache(maxsize=8)  # train.bin is read by the training and the evaluation batches: scan it once
def max_token(path: str, dtype: str, size: int, mtime: float) -> int:
    """The largest token id in a token file (size and mtime key the cache): one pass over a memory map, so
    that one id beyond the vocabulary is found before training rather than at its batch."""
    return int(np.memmap(path, dtype=dtype, mode="r").max()) if size else 0
