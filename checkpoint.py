"""The checkpoint: its format, atomic saving, exact resume of a run, and the out_dir that holds them. This file
is the only one that knows the checkpoint's keys; the others get a Header, a model or a tokenizer from it (a model
ready to use: source.py).

A checkpoint is plain data (tensors, numbers, strings, lists, dicts), loadable with torch.load(weights_only=True):
the Header's fields (asdict) beside "model" (the weights, saved from the unwrapped, uncompiled model, so its keys
carry no `_orig_mod.` / `module.` prefixes) and "optimizer". Writes go to a temporary file that is renamed over
the old one, so a crash mid-save leaves the last good checkpoint intact.

out_dir holds two: ckpt.pt, the latest state, which init_from=resume continues from; and best.pt, the one with the
best validation loss so far, which sample.py, evaluate.py and export.py read unless told otherwise (source.Source).

A sharded run (fsdp=True, tensor_parallel > 1) saves instead with torch.distributed.checkpoint: every process writes
its own shards, in parallel, into a directory of its own (ckpt-<iter>-<id>/, with the header in header.pt), and
ckpt.dcp / best.dcp are symbolic links to such directories, swapped atomically once a directory is complete.
Reading one needs no processes: any script (and a run on another number of GPUs) loads it whole, and
`python checkpoint.py --out_dir=DIR` writes the single files ckpt.pt / best.pt from it. The optimizer state of a
sharded checkpoint is keyed by parameter name, that of ckpt.pt by position; `optimizer_by_name` and
`optimizer_by_position` turn one into the other.
"""

from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
import contextlib
import errno
import os
import pickle
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.distributed as dist

import configurator
import metrics
import optim
import parallel
import process
import safeload
from configurator import UserError
from model import GPT, GPTConfig
from parallel import Layout
from datafiles import NANOGPT_META, meta_from_pickle
from tokenizer import GPT2_META, Tokenizer

CKPT_FILE = "ckpt.pt"  # the latest state
BEST_FILE = "best.pt"  # the best validation loss so far
SHARDED = {CKPT_FILE: "ckpt.dcp", BEST_FILE: "best.dcp"}  # their sharded counterparts: links to directories
LOCK_FILE = ".lock"  # held by the run that writes out_dir's checkpoints (hold_out_dir)
WRITE_TEST = ".write-test-"  # hold_out_dir's proof that out_dir takes files
HEADER_FILE = "header.pt"  # in a sharded checkpoint's directory: everything but the model and optimizer tensors
SHARDED_DIR = re.compile(r"ckpt-\d+-[0-9a-f]{8}(\.tmp)?")  # the directories save_sharded writes
# what a writer of out_dir leaves behind if it is killed mid-write, the writer's pid in group 1 where it has one
LEFTOVER = re.compile(r"(?:(?:ckpt|best)\.pt\.tmp|\.(?:ckpt|best)\.dcp)\.(\d+)|ckpt-\d+-[0-9a-f]{8}\.tmp"
                      rf"|{re.escape(WRITE_TEST)}(\d+)-.*|{metrics.TEMPORARY}")


TENSORS = ("model", "optimizer")  # the keys beside the header's fields


def file_name(which: str, sharded: bool) -> str:
    """The name in out_dir of the checkpoint `which` (CKPT_FILE, BEST_FILE) as a run of this layout saves it."""
    return SHARDED[which] if sharded else which


@dataclass
class Progress:
    """How far training has come: all a checkpoint needs, with the weights and optimizer, to resume exactly."""

    iter_num: int = 0
    best_val_loss: float = float("inf")
    batch_pos: int = 0  # global index of the first training batch of the next iteration


@dataclass
class Header:
    """Everything in a checkpoint but the weights and the optimizer state: what the model is, what data it was
    trained on, and where its run stood."""

    model_args: dict[str, Any]  # GPTConfig's fields
    iter_num: int  # optimizer steps taken
    meta: dict[str, Any] | None = None  # the dataset's meta.json: the tokenizer that sample.py decodes with
    config: dict[str, Any] = field(default_factory=dict)  # the run's settings, for the record
    best_val_loss: float = float("inf")
    batch_pos: int = 0  # global index of the first training batch of the next iteration
    rng: dict[str, Any] | None = None  # rank 0's random state: {"torch": tensor, "cuda": tensor or None}
    scaler: dict[str, Any] | None = None  # float16's gradient scaler
    tensor_parallel: int = 1  # the degree a sharded checkpoint was saved with
    rng_ranks: list[dict[str, Any]] | None = None  # a sharded checkpoint: every process's random state
    provenance: dict[str, str] | None = None  # the code, torch, device and command that wrote it (runtime)
    evaluation: dict[str, float] | None = None  # the run's latest evaluation: iter, train and val loss, val_bpb,
    # HellaSwag's acc and acc_norm where measured

    @classmethod
    def for_run(cls, config: GPTConfig, progress: Progress, meta: dict[str, Any], settings: dict[str, Any],
                device: torch.device, evaluation: dict[str, float] | None) -> Header:
        """The header of a training run's checkpoint: its model, progress, data, settings, provenance (the code,
        torch, device and command: metrics.provenance) and latest evaluation."""
        return cls(model_args=asdict(config), iter_num=progress.iter_num, meta=meta, config=settings,
                   best_val_loss=progress.best_val_loss, batch_pos=progress.batch_pos,
                   provenance=metrics.provenance(device), evaluation=evaluation)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Header:
        """The header of a loaded checkpoint dict (or header.pt); a UserError naming what a foreign one lacks."""
        missing = [k for k in ("model_args", "iter_num") if not isinstance(data, dict) or k not in data]
        if missing:
            raise UserError(f"checkpoint {path} is not one of ours: missing {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def model_config(self, **overrides: Any) -> GPTConfig:
        return GPTConfig(**self.model_args | overrides)

    @property
    def progress(self) -> Progress:
        return Progress(self.iter_num, self.best_val_loss, self.batch_pos)

    @property
    def optimizer(self) -> str:
        """The optimizer whose state the checkpoint holds (train.py's optimizer setting); before Muon, AdamW's."""
        return self.setting("optimizer", "adamw")

    @property
    def chars(self) -> str | None:
        """A character-level model's characters, in id order; None for other tokenizers."""
        return (self.meta or {}).get("chars")

    def setting(self, name: str, default: Any = None) -> Any:
        """A setting of the run that wrote the checkpoint (its dataset, data_root, batch_size, ...), or default
        where it records none: another tool's checkpoint, or one from before the setting existed."""
        return (self.config or {}).get(name, default)

    def tokenizer_kind(self, path: str) -> str:
        """The kind of tokenizer the model was trained with (gpt2, char), without building it."""
        if self.meta is None or "tokenizer" not in self.meta:
            raise UserError(f"checkpoint {path} does not record its tokenizer; refusing to guess one")
        return self.meta["tokenizer"]

    def tokenizer(self, path: str) -> Tokenizer:
        self.tokenizer_kind(path)
        try:
            return Tokenizer(self.meta)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"checkpoint {path} records a tokenizer that cannot be built: {e}") from None


@dataclass
class Checkpoint:
    """A checkpoint as read: its path, its header, and its tensors (model None where a sharded checkpoint is left
    for each process to read its own shards; optimizer None where it was not asked for)."""

    path: str
    header: Header
    model: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None

    def build_model(self, device: str | torch.device = "cpu", **overrides: Any) -> GPT:
        """The model the header describes (settings that change no weight, like dropout, overridable) with these
        weights, loaded strictly: every key must match. Built on `device`: a GPU draws the initial weights that the
        checkpoint then replaces at once, where a CPU takes seconds. Those draws leave the random generators as
        they were: a seed set before loading decides what follows."""
        cuda = [device] if torch.device(device).type == "cuda" else []
        try:
            config = self.header.model_config(**overrides)
        except (TypeError, ValueError) as e:  # another tool's model_args, or values this code refuses
            raise UserError(f"checkpoint {self.path} describes a model this code cannot build: {e}") from None
        with torch.random.fork_rng(devices=cuda), torch.device(device):
            model = GPT(config)
        try:
            model.load_state_dict(self.model)
        except RuntimeError as e:
            raise UserError(f"checkpoint {self.path}'s weights do not fit the model its model_args describe: "
                            f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
        return model

    def where(self) -> str:
        """Where the run it holds stood: 'PATH at iter N (best val loss L, the next batch B)'."""
        h = self.header
        return f"{self.path} at iter {h.iter_num} (best val loss {h.best_val_loss:.4f}, the next batch {h.batch_pos})"

    def to_dict(self) -> dict[str, Any]:
        """What is saved: plain data. Fields a checkpoint of one process leaves at None are left out, as they always
        were."""
        header = {k: v for k, v in asdict(self.header).items() if v is not None}
        return header | {"model": self.model, "optimizer": self.optimizer}


def save(ckpt: Checkpoint, out_dir: str, best: bool = False) -> str:
    """Write ckpt as out_dir/ckpt.pt; with best, also as out_dir/best.pt: a second name for the same file (a hard
    link: no second write, no second copy on disk), or a copy where the filesystem has no links. A sharded
    checkpoint these replace (ckpt.dcp, and with best best.dcp) is removed once they are in place."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CKPT_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    best_tmp = f"{os.path.join(out_dir, BEST_FILE)}.tmp.{os.getpid()}"
    try:
        with process.uninterrupted():
            write_file(ckpt.to_dict(), tmp)
            if best:
                link_or_copy(tmp, best_tmp)
                os.replace(best_tmp, os.path.join(out_dir, BEST_FILE))
            os.replace(tmp, path)  # atomic on POSIX and Windows
    except OSError as e:  # a full disk, a vanished mount: the run ends, the last good checkpoint stays
        raise UserError(save_failed(path, e)) from None
    finally:
        for name in (tmp, best_tmp):
            if os.path.exists(name):
                os.remove(name)
    for name in (CKPT_FILE, BEST_FILE) if best else (CKPT_FILE,):
        remove_link(out_dir, SHARDED[name])
    return path


def write_file(ckpt: dict[str, Any], path: str) -> None:
    with open(path, "wb") as f:
        try:
            torch.save(ckpt, f)
        except RuntimeError as e:  # torch's zip writer reports a short write (a full disk) as a RuntimeError
            raise OSError(errno.EIO, short_write(e)) from None
        f.flush()
        os.fsync(f.fileno())


def save_failed(path: str, e: BaseException) -> str:
    previous = "the previous one is left as it was" if os.path.exists(path) else "there is none yet"
    return f"could not write a checkpoint to {path} ({reason(e)}); {previous}"


def reason(e: BaseException) -> str:
    """The first line of what went wrong; for DCP's CheckpointException, of the first failed process's exception."""
    failures = getattr(e, "failures", None)  # CheckpointException: {rank: (its exception, its traceback)}
    if failures:
        e = next(iter(failures.values()))[0]
    if getattr(e, "strerror", None):
        return e.strerror
    first = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, RuntimeError) and "inline_container" in first:  # a sharded save's writer, short of room
        return short_write(e)
    return f"{type(e).__name__}: {first}"


def short_write(e: RuntimeError) -> str:
    """torch's zip writer's error for a write that did not complete (its C++ check's words), as what it means."""
    return f"the write stopped short; is the disk full? ({str(e).splitlines()[0]})"


def dcp_errors() -> tuple[type[BaseException], ...]:
    """What a DCP save or load raises: any exception, or its CheckpointException (a BaseException)."""
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, target)


def save_sharded(state: dict[str, Any], header: Header, out_dir: str, best: bool, rank: int) -> str:
    """Every process calls this with its shards (state: the model's and optimizer's sharded state dicts) and the
    same header: each writes its shards into a new directory, rank 0 adds header.pt, then points ckpt.dcp (and
    with best, best.dcp) at it. A save that fails on any process leaves the previous checkpoint as it was, and
    every process raises the same UserError (rank 0 saying why)."""
    import torch.distributed.checkpoint as dcp  # here: a second to import, which only sharded runs need

    link = os.path.join(out_dir, SHARDED[CKPT_FILE])
    name = [f"ckpt-{header.iter_num}-{uuid.uuid4().hex[:8]}" if rank == 0 else None]
    dist.broadcast_object_list(name, src=0)
    directory = os.path.join(out_dir, name[0])
    tmp = f"{directory}.tmp"
    message = None
    try:
        dcp.save(state, checkpoint_id=tmp)  # collective: it fails on every process if it fails on one
    except dcp_errors() as e:  # an OSError, or DCP's CheckpointException of one on any process
        message = save_failed(link, e)
    if rank == 0 and message is None:
        try:
            write_file(asdict(header), os.path.join(tmp, HEADER_FILE))
            os.replace(tmp, directory)
            swap_link(out_dir, SHARDED[CKPT_FILE], name[0])
            if best:
                swap_link(out_dir, SHARDED[BEST_FILE], name[0])
        except OSError as e:
            message = save_failed(link, e)
    shared = [message]
    dist.broadcast_object_list(shared, src=0)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        if shared[0] is None:
            for single in (CKPT_FILE, BEST_FILE) if best else (CKPT_FILE,):  # superseded
                if os.path.exists(os.path.join(out_dir, single)):
                    os.remove(os.path.join(out_dir, single))
            prune(out_dir)
    if shared[0] is not None:
        raise UserError(shared[0] if rank == 0 else "")
    return link


def swap_link(out_dir: str, link: str, target: str) -> None:
    """Make out_dir/link a symbolic link to out_dir/target, atomically: a reader sees the old one or the new."""
    tmp = os.path.join(out_dir, f".{link}.{os.getpid()}")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, os.path.join(out_dir, link))


def remove_link(out_dir: str, link: str) -> None:
    if os.path.islink(os.path.join(out_dir, link)):
        os.remove(os.path.join(out_dir, link))
        prune(out_dir)


@contextlib.contextmanager
def hold_out_dir(out_dir: str, resume: bool, overwrite: bool) -> Iterator[None]:
    """out_dir for one training run: made, able to hold checkpoints (said now, rather than at the first save after
    the training time is spent), held for this run alone (process.hold: a second run is refused in one line, and
    what killed writers left is removed), and its checkpoints replaced by a new run only when told to."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=f"{WRITE_TEST}{os.getpid()}-"):
            pass
    except OSError as e:
        raise UserError(f"out_dir {out_dir} cannot hold checkpoints: {e.strerror or e}") from None
    with process.hold(out_dir, LOCK_FILE, LEFTOVER, "out_dir"):
        found = present(out_dir)
        if found and not resume and not overwrite:
            raise UserError(f"out_dir {out_dir} already holds checkpoints ({', '.join(found)}): continue them "
                            "with --init_from=resume, choose another out_dir, or replace them with --overwrite=True")
        yield


def present(out_dir: str) -> list[str]:
    """The checkpoints out_dir holds, by name (ckpt.pt, best.pt, ckpt.dcp, best.dcp)."""
    names = (CKPT_FILE, BEST_FILE, SHARDED[CKPT_FILE], SHARDED[BEST_FILE])
    return [name for name in names if os.path.exists(os.path.join(out_dir, name))]


def prune(out_dir: str) -> None:
    """Remove the sharded checkpoint directories that no link points to (superseded, or left by a failed save)."""
    kept = {os.path.realpath(os.path.join(out_dir, link)) for link in SHARDED.values()}
    for entry in os.listdir(out_dir):
        path = os.path.join(out_dir, entry)
        if SHARDED_DIR.fullmatch(entry) and os.path.isdir(path) and os.path.realpath(path) not in kept:
            shutil.rmtree(path, ignore_errors=True)


def save_run(out_dir: str, layout: Layout, model: GPT, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, header: Header, best: bool = False) -> str | None:
    """Save a run's state, from every process: header's progress with the random state and the scaler added. A
    sharded model is saved sharded, each process writing its own part (with the random state of each process, and
    the model's original config: the tensor-parallel split changes the head counts of its attention modules, not
    of the config); any other by rank 0 as one file. Returns the path on rank 0."""
    header.rng = rng_state(layout.device)
    header.scaler = scaler.state_dict()
    if layout.sharded:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        header.rng_ranks = [None] * layout.world
        dist.all_gather_object(header.rng_ranks, header.rng)
        header.tensor_parallel = layout.tp
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
        return save_sharded(state, header, out_dir, best, layout.rank)
    failure: list[str | None] = [None]
    path = None
    if layout.master:
        ckpt = Checkpoint(os.path.join(out_dir, CKPT_FILE), header, model.state_dict(), optimizer.state_dict())
        try:
            path = save(ckpt, out_dir, best=best)
        except UserError as e:
            failure = [str(e)]
    if layout.distributed:  # the others learn that rank 0's write failed, and stop with it rather than wait
        dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise UserError(failure[0] if layout.master else "", together=layout.distributed)
    return path


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_run(ckpt: Checkpoint, layout: Layout, model: GPT, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler) -> None:
    """Optimizer (and for a sharded model, the weights), gradient scaler and random state as the checkpoint left
    them. The optimizer's state (its moments, its step counts) is the checkpoint's; its groups' settings (rates,
    decay, betas, and how it steps: fused, foreach, capturable) are this run's, as its settings and this machine
    give them."""
    how = {k: optimizer.defaults[k] for k in ("fused", "foreach", "capturable") if k in optimizer.defaults}
    settings = [{k: v for k, v in group.items() if k != "params"} | how for group in optimizer.param_groups]
    names = optimizer_names(model, optimizer)
    if layout.sharded:
        restore_shards(ckpt, layout, model, optimizer, names)
    else:  # a sharded checkpoint's optimizer state, read whole, is keyed by name
        try:
            optimizer.load_state_dict(optimizer_by_position(ckpt.optimizer or {}, names))
        except (ValueError, KeyError, TypeError) as e:  # another tool's optimizer, in another order
            raise UserError(not_resumable(ckpt, optimizer, e)) from None
    for group, mine in zip(optimizer.param_groups, settings, strict=True):
        group.update(mine)  # optim.set_capturable then puts the step counts where these kernels want them
    header = ckpt.header
    if header.scaler is not None:
        scaler.load_state_dict(header.scaler)
    rng = header.rng  # rank 0's; a sharded checkpoint has every process's, used where the layout is the same
    if header.rng_ranks and len(header.rng_ranks) == layout.world and header.tensor_parallel == layout.tp:
        rng = header.rng_ranks[layout.rank]
    if rng is not None:
        torch.set_rng_state(rng["torch"].cpu())
        if layout.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), layout.device)


def restore_shards(ckpt: Checkpoint, layout: Layout, model: GPT, optimizer: torch.optim.Optimizer,
                   names: list[str]) -> None:
    """A sharded model's weights and optimizer state from the checkpoint. Saved sharded with the same tensor-
    parallel degree (any number of FSDP processes), each process reads just its shards; otherwise (a single file,
    another degree) each reads the whole state and keeps its part."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    if os.path.isdir(ckpt.path) and ckpt.header.tensor_parallel == layout.tp:
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
        load_into(ckpt.path, state)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        return
    whole = read_sharded(ckpt.path) if os.path.isdir(ckpt.path) else ckpt
    weights = parallel.reorder_rows(whole.model, model.config, layout.tp, to_rank_major=True)
    osd = optimizer_by_name(whole.optimizer, names)  # ckpt.pt's is keyed by position
    osd = osd | {"state": parallel.reorder_rows(osd["state"], model.config, layout.tp, to_rank_major=True)}
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, osd, options=options)


def locate(out_dir: str, which: str = "latest") -> str:
    """The path of out_dir's latest checkpoint (ckpt.pt or ckpt.dcp), or with which="best" its best (best.pt or
    best.dcp; the latest where a run made none, as runs before best.pt existed did). Where a single file and a
    sharded checkpoint both exist (a conversion keeps the sharded one), the one written last."""
    if which not in ("latest", "best"):
        raise UserError(f"checkpoint must be best or latest, got '{which}'")
    for name in (BEST_FILE, CKPT_FILE) if which == "best" else (CKPT_FILE,):
        found = [p for p in (os.path.join(out_dir, name), os.path.join(out_dir, SHARDED[name])) if os.path.exists(p)]
        if found:  # a link resolved now: a run that moves it on meanwhile does not mix two checkpoints in a read
            return os.path.realpath(max(found, key=os.path.getmtime))
    best = [name for name in (BEST_FILE, SHARDED[BEST_FILE]) if os.path.exists(os.path.join(out_dir, name))]
    if best:  # ckpt.pt removed by hand: the best is the state to go on from
        latest = CKPT_FILE if best[0] == BEST_FILE else SHARDED[CKPT_FILE]
        raise UserError(f"no latest checkpoint in {out_dir}, only {best[0]}: to continue from it, copy it to "
                        f"{latest} (cp -P {os.path.join(out_dir, best[0])} {os.path.join(out_dir, latest)}) and "
                        "resume")
    raise UserError(f"no checkpoint at {os.path.join(out_dir, CKPT_FILE)}: train one first (init_from=scratch) or "
                    f"set out_dir{checkpoints_here()}")


def checkpoints_here(shown: int = 5) -> str:
    """' (checkpoints here are in: a, b, ... and N more)': the folders of the working directory that hold
    checkpoints, the most recently written first (the run a user just made is the one they mean); '' for none."""
    found = {}
    for entry in os.listdir(".") if os.path.isdir(".") else []:
        names = present(entry) if os.path.isdir(entry) else []
        if names:
            found[entry] = max(os.lstat(os.path.join(entry, name)).st_mtime for name in names)
    newest = sorted(found, key=lambda d: (-found[d], d))
    more = f" and {len(newest) - shown} more" if len(newest) > shown else ""
    return f" (checkpoints here are in: {', '.join(newest[:shown])}{more})" if newest else ""


def read(out_dir: str, which: str = "latest", map_location: str | torch.device = "cpu", mmap: bool = False,
         optimizer: bool = False, shards_later: bool = False) -> Checkpoint:
    """out_dir's latest checkpoint, or with which="best" its best (see locate). mmap, for readers of the weights
    only: a tensor is read from disk when it is used, so sampling never reads the optimizer state. Training does
    not map: its run replaces the file it resumed from. A sharded checkpoint is read whole, on the CPU, its
    optimizer state (keyed by name) only with optimizer=True; with shards_later only its header is read, for
    each process of a sharded run to read its own shards (restore_run)."""
    path = locate(out_dir, which)
    if os.path.isdir(path):
        return Checkpoint(path, read_header(path)) if shards_later else read_sharded(path, optimizer)
    data = load_file(path, map_location, mmap)
    if isinstance(data, dict) and "model_args" in data and "batch_pos" not in data:
        data = from_nanogpt(data, path)
    header = Header.from_dict(data, path)
    if "model" not in data:
        raise UserError(f"checkpoint {path} is not one of ours: missing model")
    return Checkpoint(path, header, data["model"], data.get("optimizer") if optimizer else None)


def load_file(path: str, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """A single-file checkpoint's dict as torch.load(weights_only=True) reads it; a damaged file is one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 (torch raises many types for a damaged zip or pickle)
        raise UserError(corrupt(path, e)) from None


def run_settings(out_dir: str) -> dict[str, Any]:
    """The settings of the run whose latest checkpoint is in out_dir, as it recorded them (train.py's TrainConfig
    fields; a nanoGPT checkpoint's config holds nanoGPT's, which mostly share their names), for a resume to
    continue that run. Only the settings are read (the weights of a single file stay on disk: mmap), without the
    conversion a nanoGPT file gets when its model is read (read), which says so once."""
    path = locate(out_dir)
    if os.path.isdir(path):
        config = read_header(path).config
    else:
        data = load_file(path, mmap=True)
        config = data.get("config") if isinstance(data, dict) else None
    return dict(config) if isinstance(config, dict) else {}  # a foreign file: read refuses it in one line later


def from_nanogpt(data: dict[str, Any], path: str) -> dict[str, Any]:
    """A checkpoint nanoGPT's train.py wrote (model_args, iter_num, best_val_loss, config, model, optimizer, and
    no data position: ours always has one) as ours: its weights without torch.compile's _orig_mod. prefix, and
    the tokenizer nanoGPT's sample.py would take: data/<its dataset>/meta.pkl if there is one (read as
    datafiles.read_meta reads it), else GPT-2's BPE."""
    model = {"model": {k.removeprefix("_orig_mod."): v for k, v in data["model"].items()}} if isinstance(
        data.get("model"), dict) else {}
    dataset = (data.get("config") or {}).get("dataset")
    pickled = os.path.join("data", str(dataset), NANOGPT_META) if dataset else None
    meta = meta_from_pickle(pickled) if pickled and os.path.isfile(pickled) else GPT2_META
    vocab = (data.get("model_args") or {}).get("vocab_size")
    if meta is GPT2_META and isinstance(vocab, int) and vocab < GPT2_META["vocab_size"]:
        where = pickled or "data/<its dataset>/meta.pkl"
        raise UserError(f"{path} is a nanoGPT checkpoint of {vocab} token ids, too few for GPT-2's BPE: its "
                        f"tokenizer, {where} relative to this folder (where nanoGPT's sample.py looks), is not "
                        "here: run from the folder that holds it, or copy it there")
    print(f"note: {path} is a nanoGPT checkpoint; its tokenizer: {pickled if meta is not GPT2_META else 'GPT-2 BPE'}",
          file=sys.stderr)
    return data | model | {"meta": meta}


def corrupt(path: str, e: BaseException) -> str:
    """Why a checkpoint could not be read: damaged, or (where another run holds its out_dir) being replaced by
    that run as it was read, which says nothing against it."""
    out_dir = os.path.dirname(path) or "."
    held = process.holder(out_dir, LOCK_FILE)
    if held is not None:
        return (f"out_dir {out_dir} is in use by another run ({held}), which was writing its checkpoints as they "
                "were read: wait for it to end, or choose another out_dir")
    named = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", str(e), re.I)  # torch.load(weights_only)'s
    if isinstance(e, pickle.UnpicklingError) and named:  # refusal of a name, not damage
        return (f"refusing to load {path}: it names {named[1]}, which a checkpoint never holds (a file from "
                "elsewhere, or a crafted one); nothing in it was run")
    return f"checkpoint {path} is corrupt or truncated ({reason(e)})"


def sharded_reader(path: str) -> Any:
    """DCP's reader of the sharded checkpoint at path (safeload's, which runs no code), its metadata checked
    first: a refusal or a missing file is then one line, before DCP would log it with a traceback."""
    try:
        metadata = safeload.dcp_metadata(path)
    except safeload.Refused as e:
        raise UserError(f"refusing checkpoint {path}: {e}") from None
    except OSError as e:
        raise UserError(corrupt(path, e)) from None
    return safeload.dcp_reader(path, metadata)


def unreadable(path: str, e: BaseException) -> str:
    """Why a sharded checkpoint could not be read: refused by safeload, or damaged."""
    failures = getattr(e, "failures", None)  # CheckpointException: {rank: (its exception, its traceback)}
    cause = next(iter(failures.values()))[0] if failures else e
    if isinstance(cause, safeload.Refused):
        return f"refusing checkpoint {path}: {cause}"
    return corrupt(path, e)


def read_header(path: str) -> Header:
    """A sharded checkpoint's header."""
    try:
        data = torch.load(os.path.join(path, HEADER_FILE), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (a missing, truncated or foreign file)
        raise UserError(corrupt(path, e)) from None
    return Header.from_dict(data, path)


def read_sharded(path: str, optimizer: bool = True) -> Checkpoint:
    """A sharded checkpoint read whole by this one process, its rows in the model's own order whatever tensor
    parallelism saved it."""
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    header = read_header(path)
    state: dict[str, Any] = {}
    reader = sharded_reader(path)
    try:  # as DCP's own dcp_to_torch_save reads one (public dcp.load fills only the keys given it): tensors of
        # the saved sizes, filled from every shard
        _load_state_dict(state, storage_reader=reader, no_dist=True,
                         planner=_EmptyStateDictLoadPlanner(keys=set(TENSORS) if optimizer else {"model"}))
    except dcp_errors() as e:
        raise UserError(unreadable(path, e)) from None
    config, tp = header.model_config(), header.tensor_parallel
    ckpt = Checkpoint(path, header, parallel.reorder_rows(state["model"], config, tp, to_rank_major=False))
    if optimizer:
        moments = parallel.reorder_rows(state["optimizer"]["state"], config, tp, to_rank_major=False)
        ckpt.optimizer = state["optimizer"] | {"state": moments}
    return ckpt


def load_into(path: str, state: dict[str, Any]) -> None:
    """Fill this process's shards (state: sharded state dicts of the layout that saved the checkpoint at path,
    any number of processes) from it: every process calls this."""
    import torch.distributed.checkpoint as dcp

    reader = sharded_reader(path)
    try:
        dcp.load(state, storage_reader=reader)
    except dcp_errors() as e:
        raise UserError(unreadable(path, e)) from None


def not_resumable(ckpt: Checkpoint, optimizer: torch.optim.Optimizer, e: Exception) -> str:
    """Why a checkpoint's optimizer state does not load into this run's optimizer: Muon's groups set otherwise
    (embed_lr and head_lr give the embeddings and an untied head groups of their own), or another optimizer."""
    saved = (ckpt.optimizer or {}).get("param_groups")
    if ckpt.header.optimizer == "muon" and isinstance(saved, list) and len(saved) != len(optimizer.param_groups):
        config = ckpt.header.config or {}
        was = ", ".join(f"{k}={config.get(k)}" for k in ("embed_lr", "head_lr"))
        return (f"the optimizer state in {ckpt.path} has {len(saved)} parameter groups and this run's optimizer "
                f"{len(optimizer.param_groups)}: embed_lr and head_lr, set or not, decide Muon's groups; resume "
                f"with them as the run that saved it had them ({was})")
    return (f"the optimizer state in {ckpt.path} does not fit this run's optimizer ({e}): its weights still sample "
            "and export, but cannot be resumed here")


def optimizer_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter of the optimizer, in its order (the positions of its state dict)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_by_name(osd: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state dict keyed by position (optimizer.state_dict()) keyed by parameter name instead; one
    keyed by name already is returned as it is."""
    if not by_position(osd):
        return osd
    return {"state": {names[i]: s for i, s in osd["state"].items()},
            "param_groups": [g | {"params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}


def by_position(osd: dict[str, Any]) -> bool:
    return all(isinstance(i, int) for group in osd["param_groups"] for i in group["params"])


def optimizer_by_position(osd: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The reverse of optimizer_by_name; a state dict keyed by position already is returned as it is."""
    if by_position(osd):
        return osd
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: s for n, s in osd["state"].items()},
            "param_groups": [g | {"params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}


@dataclass
class ConvertConfig:
    """Write a sharded checkpoint (out_dir/ckpt.dcp, best.dcp) as the single files ckpt.pt and best.pt, which any
    script reads and a run on one GPU resumes from. The sharded checkpoint is kept."""

    out_dir: str = "out"  # the run's folder


def to_single_file(path: str) -> Checkpoint:
    """The sharded checkpoint at path as ckpt.pt holds it: its optimizer state keyed by position."""
    ckpt = read_sharded(path)
    with torch.device("meta"):  # shapes only: the parameter order the run's optimizer has
        model = GPT(ckpt.header.model_config())
    optimizer = optim.build(model, ckpt.header.optimizer, 1.0, 0.0, (0.9, 0.95), "cpu")
    ckpt.optimizer = optimizer_by_position(ckpt.optimizer, optimizer_names(model, optimizer))
    return ckpt


def main(argv: list[str]) -> list[str]:
    cfg = configurator.load(ConvertConfig, argv)
    written = []
    for single, sharded in SHARDED.items():
        path = os.path.join(cfg.out_dir, sharded)
        if os.path.isdir(path):
            target = os.path.join(cfg.out_dir, single)
            tmp = f"{target}.tmp.{os.getpid()}"
            try:
                write_file(to_single_file(path).to_dict(), tmp)
                os.replace(tmp, target)
            except OSError as e:
                raise UserError(save_failed(target, e)) from None
            finally:
                if os.path.exists(tmp):  # a half-written file, after a failure
                    os.remove(tmp)
            print(f"{path} -> {target}")
            written.append(target)
    if not written:
        raise UserError(f"no sharded checkpoint in {cfg.out_dir} ({', '.join(SHARDED.values())})")
    return written


if __name__ == "__main__":
    process.run(main)
