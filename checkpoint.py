"""Checkpoint I/O shared by train.py, sample.py and export.py, and OpenAI's GPT-2 weights by name.

A checkpoint is plain data (tensors, numbers, strings, lists, dicts), loadable with torch.load(weights_only=True),
saved from the unwrapped, uncompiled model so its keys carry no `_orig_mod.` / `module.` prefixes. Writes go to a
temporary file that is renamed over the old one, so a crash mid-save leaves the last good checkpoint intact.

out_dir holds two: ckpt.pt, the latest state, which init_from=resume continues from; and best.pt, the one with the
best validation loss so far, which sample.py and export.py read unless told otherwise.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch

import configurator
from configurator import UserError
from model import GPT, GPTConfig

CKPT_FILE = "ckpt.pt"  # the latest state
BEST_FILE = "best.pt"  # the best validation loss so far


def save(ckpt: dict[str, Any], out_dir: str, best: bool = False) -> str:
    """Write ckpt as out_dir/ckpt.pt; with best, also as out_dir/best.pt: a second name for the same file (a hard
    link: no second write, no second copy on disk), or a copy where the filesystem has no links."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CKPT_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    best_tmp = f"{os.path.join(out_dir, BEST_FILE)}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        if best:
            link_or_copy(tmp, best_tmp)
            os.replace(best_tmp, os.path.join(out_dir, BEST_FILE))
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except OSError as e:  # a full disk, a vanished mount: the run ends, the last good checkpoint stays
        previous = "the previous one is left as it was" if os.path.exists(path) else "there is none yet"
        raise UserError(f"could not write a checkpoint to {path} ({e.strerror or e}); {previous}") from None
    finally:
        for name in (tmp, best_tmp):
            if os.path.exists(name):
                os.remove(name)
    return path


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, target)


def load(out_dir: str, map_location: str | torch.device = "cpu", which: str = "latest",
         mmap: bool = False) -> dict[str, Any]:
    """out_dir's latest checkpoint (ckpt.pt), or with which="best" its best (best.pt; ckpt.pt where a run made
    none, as runs before best.pt existed did). mmap, for readers of the weights only: a tensor is read from disk
    when it is used, so sampling never reads the optimizer state (1 GB of GPT-2 124M's 1.5 GB). Training does
    not map: its run replaces the file it resumed from."""
    if which not in ("latest", "best"):
        raise UserError(f"checkpoint must be best or latest, got '{which}'")
    path = os.path.join(out_dir, BEST_FILE)
    if which == "latest" or not os.path.isfile(path):
        path = os.path.join(out_dir, CKPT_FILE)
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one first (init_from=scratch) or set out_dir")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 (torch raises many types for a damaged zip or pickle)
        reason = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {reason})") from None
    missing = [k for k in ("model", "model_args", "iter_num") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} is not one of ours: missing {', '.join(missing)}")
    return ckpt


GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def pretrained(name: str, dropout: float = 0.0) -> GPT:
    """OpenAI's GPT-2 weights by name (downloaded by transformers on first use, then cached)."""
    if name not in GPT2_NAMES:
        raise UserError(f"unknown pretrained model '{name}' (one of {', '.join(GPT2_NAMES)})")
    # here: importing transformers takes seconds, and few runs need it
    transformers = configurator.need("transformers", f"init_from={name}")
    try:
        return GPT.from_hf(transformers.GPT2LMHeadModel.from_pretrained(name), dropout)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load {name} weights (they download on first use): {e}".splitlines()[0]) from None


def model_from(ckpt: dict[str, Any], device: str | torch.device = "cpu", **overrides: Any) -> GPT:
    """Rebuild the model a checkpoint describes (settings that change no weight, like dropout, overridable) and
    load its weights (strictly: every key must match). Built on `device`: a GPU draws the initial weights that
    the checkpoint then replaces in milliseconds, where a CPU takes seconds (2.7 s for GPT-2 124M). Those draws
    leave the random generators as they were: a seed set before loading decides what follows."""
    cuda = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.device(device):
        model = GPT(GPTConfig(**ckpt["model_args"] | overrides))
    model.load_state_dict(ckpt["model"])
    return model
