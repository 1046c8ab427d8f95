"""Where a model comes from: drawn from scratch (a preset, the settings over it, the data's vocabulary), read from
the checkpoint in an out_dir, or OpenAI's GPT-2 weights. The one way train.py, sample.py, evaluate.py and export.py
get a model: for training (for_training: the checkpoint's optimizer state too, the settings checked against it) or
for use (Source: evaluation, decoding, export).

A model trained on one tokenizer's ids means nothing on another's: check_tokens refuses data whose ids are other
tokens, wherever a model meets data.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

import checkpoint
import hf
from configurator import UserError
from datafiles import read_meta
from model import GPT, PRESETS, GPTConfig, ModelSettings, resolve_config
from tokenizer import GPT2_META, Tokenizer

INIT_FROM = ("scratch", "resume", *hf.GPT2_NAMES)  # train.py's sources; the others' are all but scratch


def check_tokens(kind: str, chars: str | None, meta: dict[str, Any], data_dir: str, use: str) -> None:
    """Refuse data whose ids are not the model's tokens: another tokenizer, or (char) another set of characters,
    where the same ids stand for other characters. `use`: what to do instead, e.g. 'resume on'."""
    if meta["tokenizer"] != kind:
        raise UserError(f"the model was trained on {kind} tokens, {data_dir} has {meta['tokenizer']} tokens: {use} "
                        "data with its tokenizer")
    if kind == "char" and meta.get("chars") != chars:
        raise UserError(f"the model was trained on {len(chars or '')} characters, {data_dir} has another vocabulary "
                        f"({len(meta.get('chars') or '')} characters): {use} data prepared with its characters")


def scratch_config(settings: ModelSettings, vocab_size: int) -> GPTConfig:
    """The preset with every model setting given over it, and the data's vocabulary padded to vocab_multiple."""
    try:
        return settings.resolve(vocab_size)
    except ValueError as e:
        raise UserError(str(e)) from None


def data_meta(data_dir: str, preset: str | None, dry_run: bool = False) -> dict[str, Any]:
    """The dataset's meta.json, whose vocabulary a model from scratch takes; a dry run without one assumes GPT-2's
    tokens and the preset's vocabulary."""
    try:
        return read_meta(data_dir)
    except UserError:
        if not dry_run:
            raise
        return GPT2_META | {"vocab_size": PRESETS.get(preset or "", {}).get("vocab_size", GPT2_META["vocab_size"])}


def check_resume(settings: ModelSettings, optimizer: str, header: checkpoint.Header, out_dir: str) -> None:
    """Refuse settings that would build another model than the checkpoint's (ModelSettings.conflicts), or another
    optimizer than the one whose state it holds."""
    if header.optimizer != optimizer:
        raise UserError(f"the checkpoint in {out_dir} holds {header.optimizer}'s state, the settings ask for "
                        f"optimizer={optimizer}: resume with optimizer={header.optimizer}")
    try:
        conflicts = settings.conflicts(header.model_args)
    except ValueError as e:
        raise UserError(str(e)) from None
    if conflicts:
        k, have, want = conflicts[0]
        source = f" (from preset '{settings.preset}')" if settings.preset and getattr(settings, k, None) is None else ""
        raise UserError(f"the checkpoint in {out_dir} has {k}={have!r}, the settings ask for {k}={want!r}{source}: "
                        "resume with the checkpoint's settings, or train from scratch elsewhere")


def for_training(settings: ModelSettings, init_from: str, out_dir: str, optimizer: str, meta: dict[str, Any],
                 data_dir: str, device: torch.device, fits: Callable[[GPTConfig], None], dry_run: bool = False,
                 sharded: bool = False) -> tuple[GPT, checkpoint.Checkpoint | None]:
    """The model to train, and the checkpoint when resuming (the settings must match it, the data its tokens);
    `fits` refuses a model that cannot train on the device, before it is built. A dry run builds it on the meta
    device: shapes only, no memory. A model to be sharded is built on its device (a CPU takes minutes to draw
    billions of weights), and when resuming its weights are left to checkpoint.restore_run, which reads each
    process's shards only."""
    if init_from == "scratch":
        config = scratch_config(settings, meta["vocab_size"])
        if not (dry_run or sharded):
            fits(config)
        with torch.device("meta" if dry_run else device) if dry_run or sharded else contextlib.nullcontext():
            return GPT(config), None
    if init_from == "resume":  # mapped when sharded: restore_run reads the weights it needs
        ckpt = checkpoint.read(out_dir, map_location="cpu" if sharded else device, mmap=sharded, optimizer=True,
                               shards_later=sharded)
        check_tokens(ckpt.header.tokenizer_kind(ckpt.path), ckpt.header.chars, meta, data_dir, "resume on")
        check_resume(settings, optimizer, ckpt.header, out_dir)
        if sharded:
            with torch.device(device):
                return GPT(ckpt.header.model_config(dropout=settings.dropout)), ckpt
        fits(ckpt.header.model_config())
        return ckpt.build_model(dropout=settings.dropout), ckpt
    if meta["tokenizer"] != "gpt2":
        raise UserError(f"{init_from} needs GPT-2 BPE data, {data_dir} has {meta['tokenizer']} tokens")
    # OpenAI's weights come as they are: a setting that would build another model is refused, not dropped (a
    # shorter block_size crops the positions)
    asked = [c for c in settings.conflicts(asdict(resolve_config(init_from))) if c[0] != "block_size"]
    if asked:
        k, have, want = asked[0]
        raise UserError(f"init_from={init_from} is OpenAI's model as it is ({k}={have!r}), the settings ask for "
                        f"{k}={want!r}: drop it, or train from scratch")
    if dry_run:  # the same shapes as OpenAI's weights, without downloading them
        with torch.device("meta"):
            model = GPT(resolve_config(init_from, dropout=settings.dropout))
    else:
        model = hf.pretrained(init_from, settings.dropout)
    if settings.block_size is not None and settings.block_size < model.config.block_size:
        model.crop_block_size(settings.block_size)
    return model, None


@dataclass
class Source:
    """A trained model to use, opened without reading its weights yet (every refusal can come before a download):
    the checkpoint in an out_dir (init_from=resume; its tensors mapped from disk as they are used, the optimizer
    state never read) or OpenAI's GPT-2 weights (init_from=gpt2, ...)."""

    init_from: str
    ckpt: checkpoint.Checkpoint | None = None

    @classmethod
    def open(cls, init_from: str, out_dir: str, which: str = "best") -> Source:
        if init_from not in INIT_FROM[1:]:
            raise UserError(f"init_from must be resume or one of {', '.join(hf.GPT2_NAMES)}, got '{init_from}'")
        return cls(init_from, checkpoint.read(out_dir, which, mmap=True) if init_from == "resume" else None)

    @property
    def header(self) -> checkpoint.Header | None:
        return self.ckpt.header if self.ckpt is not None else None

    def describe(self) -> str:
        return f"checkpoint {os.path.dirname(self.ckpt.path)}" if self.ckpt is not None else \
            f"init_from={self.init_from}"

    def tokenizer(self) -> Tokenizer:
        return self.ckpt.header.tokenizer(self.ckpt.path) if self.ckpt is not None else Tokenizer(GPT2_META)

    def model(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
              padded: bool = False) -> GPT:
        """The model on `device`, its weights in `dtype` (None: as saved, float32), in eval mode; without the
        vocabulary rows train.py padded on (no token id maps to them: never sample them) unless `padded` (the
        model as train.py evaluates it)."""
        # a checkpoint's model is drawn on the device (seconds where a CPU takes minutes); OpenAI's weights arrive
        # on the CPU and move once, in the dtype
        model = self.ckpt.build_model(device) if self.ckpt is not None else hf.pretrained(self.init_from)
        if not padded:
            model.crop_vocab(self.tokenizer().vocab_size)
        return model.eval().to(device=device, dtype=dtype)
