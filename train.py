"""Train a GPT on one device or several under torchrun (DDP; FSDP and tensor parallelism: parallel.py).

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    torchrun --standalone --nproc_per_node=2 train.py config/train_gpt2_xl.py  # FSDP: a model too big for one GPU
    python train.py config/train_gpt2.py --dry_run=True  # the model's accounting and the batch arithmetic only

Data are data/<dataset>/{train,val}.bin with their meta.json (see data/*/prepare.py). Checkpoints go to
out_dir/ckpt.pt (the latest) and out_dir/best.pt (the best validation loss); init_from=resume continues exactly
where ckpt.pt stopped (same losses as an unbroken run).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import accounting
import checkpoint
import configurator
import parallel
import runtime
from configurator import UserError
from model import GPT, PRESETS, GPTConfig, resolve_config
from tokenizer import GPT2_META, read_meta

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

MODEL_KEYS = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]
EVAL_PROGRESS_S = 10.0  # an evaluation prints its progress this often
CPU_WARNING_FLOPS = 1e12  # training FLOPs per iteration above which a CPU run is warned that it is a GPU recipe
CPU_FLOPS = 1e11  # a typical CPU's FLOP/s in float32 training, for that warning's estimate


@dataclass
class TrainConfig:
    """Train a GPT (defaults: GPT-2 124M on OpenWebText, as config/train_gpt2.py spells out)."""

    # I/O
    out_dir: str = "out"  # where ckpt.pt is written (and read by init_from=resume)
    eval_interval: int = 2000  # evaluate, and maybe checkpoint, every this many iterations
    log_interval: int = 1  # print loss, timing and MFU every this many iterations
    eval_iters: int = 200  # batches per split in each evaluation, at most: fewer when the split holds fewer windows
    eval_only: bool = False  # evaluate once and exit
    eval_at_start: bool = False  # evaluate before the first step from scratch too (8.5 s of GPT-2's start-up, H100)
    always_save_checkpoint: bool = True  # ckpt.pt at every evaluation, else only when val loss improves (best.pt)
    init_from: str = "scratch"  # scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl
    seed: int = 1337  # the data order and the initial weights are functions of it
    # wandb logging
    wandb_log: bool = False  # log to Weights & Biases (WANDB_MODE=offline works)
    wandb_project: str = "owt"  # the wandb project
    wandb_run_name: str = "gpt2"  # the wandb run's name
    # data
    dataset: str = "openwebtext"  # the folder under data_root with train.bin, val.bin, meta.json
    data_root: str = "data"  # where the dataset folders are
    gradient_accumulation_steps: int = 5 * 8  # in total, divided among the data-parallel processes
    batch_size: int = 12  # micro-batch size per process
    # model: a preset (model.PRESETS: gpt1, gpt2, gpt3-xl, llama-small, ...) and settings that override it; a
    # setting left at None is the preset's, else model.GPTConfig's default (GPT-2 124M, here without biases)
    preset: str = ""  # a named model (model.PRESETS): gpt2, gpt2-xl, gpt3-xl, llama-small, ...
    block_size: int | None = None  # None: 1024
    n_layer: int | None = None  # transformer blocks
    n_head: int | None = None  # attention heads
    n_embd: int | None = None  # model width
    dropout: float = 0.0  # dropout probability while training (0.1+ for finetuning)
    bias: bool | None = None  # None: the preset's, else False (nanoGPT's default)
    qkv_bias: bool | None = None  # None: as bias
    n_kv_head: int | None = None  # None: n_head; 1: multi-query; in between: grouped-query
    head_size: int | None = None  # None: n_embd // n_head
    attn_pattern: str | None = None  # dense | alternating (GPT-3: every other layer banded, needs window_size)
    window_size: int | None = None  # banded layers attend to the last window_size tokens
    norm: str | None = None  # layernorm | rmsnorm
    post_norm: bool | None = None  # GPT-1's norm placement
    mlp: str | None = None  # gelu | relu | swiglu
    mlp_hidden: int | None = None  # None: 4 * n_embd (swiglu: 2/3 of that, rounded up to 256)
    pos_emb: str | None = None  # learned | rope | none
    rope_base: float | None = None  # rotary positions: the base of the angle frequencies (10000)
    parallel_block: bool | None = None  # PaLM's parallel attention + MLP
    tie_embeddings: bool | None = None  # lm_head shares the token embedding (GPT-2); False: its own matrix
    activation_checkpointing: bool = False  # recompute each block in the backward pass: less memory, more time
    fsdp: bool = False  # under torchrun: shard the weights, gradients and AdamW state over the processes (FSDP2),
    # for models whose 16 bytes per parameter do not fit one GPU; checkpoints are then sharded too (ckpt.dcp)
    tensor_parallel: int = 1  # under torchrun: split each block's matrices over this many processes (Megatron);
    # fewer than all of them needs fsdp=True (e.g. 4 processes = FSDP 2 x TP 2)
    dry_run: bool = False  # print the model, batch arithmetic and memory estimate, then exit
    vocab_multiple: int = 64  # pad the vocabulary to a multiple of this (faster matmuls); 1 = no padding
    # AdamW
    learning_rate: float = 6e-4  # peak learning rate, after warmup
    max_iters: int = 600000  # optimizer steps in all
    weight_decay: float = 1e-1  # AdamW weight decay, on matrices and embeddings only
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # 0 disables clipping
    max_skipped_steps: int = 10  # updates skipped in a row (NaN/inf loss or gradients) that stop the run; 0: never
    # learning-rate schedule: linear warmup, cosine decay to min_lr
    decay_lr: bool = True  # False: a constant learning_rate
    warmup_iters: int = 2000  # linear warmup over this many iterations
    lr_decay_iters: int = 600000  # cosine decay to min_lr ends here (usually max_iters)
    min_lr: float = 6e-5  # the learning rate after decay (usually learning_rate / 10)
    # system
    backend: str = "nccl"  # nccl on GPUs, gloo on CPUs
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 elsewhere) | ...
    compile: bool = True  # torch.compile the model; falls back to eager with a warning if it fails
    cuda_graph: bool = False  # replay each step as one CUDA graph, one launch instead of hundreds (one GPU,
    # bf16/fp32; elsewhere the step runs without it, with a note)
    fp8: bool = False  # FP8 matrix multiplies (torchao's float8 training; H100-class GPUs): less memory, faster only
    # for wide models (0.92x for GPT-2 124M, 1.03x for 1.56B), other numerics, so opt-in; needs pip install torchao


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup over warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


class Batches:
    """Random windows (x, y = x shifted by one) of a token file. Batch k is a pure function of (seed, k), so the
    sampler's whole state is the index of the next batch: resuming, or splitting batches across data-parallel ranks,
    gives exactly the batches an unbroken single process would see.

    Rows are read with seek + fromfile from one open file handle: an np.memmap held for the whole run makes
    resident memory grow with every page touched, and reopening one per batch costs a mapping each time."""

    def __init__(self, path: str, dtype: str, block_size: int, batch_size: int, vocab_size: int, seed: int) -> None:
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
        self.vocab_size = vocab_size
        self.seed = seed
        highest = max_token(path, dtype, size, os.path.getmtime(path))
        if highest >= vocab_size:
            raise UserError(f"{path} holds token id {highest} >= vocab_size {vocab_size}: it was prepared for "
                            "another vocabulary")

    def read(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k on the CPU: x, y of shape (batch_size, block_size), int64."""
        starts = np.random.default_rng((self.seed, k)).integers(0, self.n_tokens - self.block_size,
                                                                size=self.batch_size)
        return self.windows(starts)

    def windows(self, starts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y for the windows that begin at these token offsets, one row each."""
        T = self.block_size
        rows = np.empty((len(starts), T + 1), dtype=np.int64)
        for row, start in zip(rows, starts):
            self.file.seek(int(start) * self.dtype.itemsize)
            row[:] = np.fromfile(self.file, dtype=self.dtype, count=T + 1)
        data = torch.from_numpy(rows)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.read(k)
        if device.type == "cuda":  # pinned memory lets the copy overlap the GPU's work
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


class Windows(Batches):
    """The evaluation's batches: non-overlapping windows spread evenly over a token file, in order, at most
    max_batches batches of them (the whole file when it holds fewer). Every evaluation reads the same tokens, and
    a split that fits is measured exactly rather than sampled: on Shakespeare, two samples of 200 random batches
    differed by 0.02 in val loss, more than the gains being compared. The last batch is filled out to full size
    (one shape, so no recompilation) with rows whose targets are -1, which the loss ignores."""

    def __init__(self, path: str, dtype: str, block_size: int, batch_size: int, vocab_size: int,
                 max_batches: int) -> None:
        super().__init__(path, dtype, block_size, batch_size, vocab_size, seed=0)
        available = (self.n_tokens - 1) // block_size
        count = min(available, max_batches * batch_size)
        self.starts = [i * available // count * block_size for i in range(count)]
        self.n_batches = -(-count // batch_size)

    def read(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.windows(self.starts[k * self.batch_size:(k + 1) * self.batch_size])
        missing = self.batch_size - len(x)
        if missing:
            x = torch.cat([x, x.new_zeros(missing, self.block_size)])
            y = torch.cat([y, y.new_full((missing, self.block_size), -1)])
        return x, y


@functools.lru_cache(maxsize=8)  # train.bin is read by the training and the evaluation batches: scan it once
def max_token(path: str, dtype: str, size: int, mtime: float) -> int:
    """The largest token id in a token file (size and mtime key the cache): one pass over a memory map, about a
    second per GB, so that one id beyond the vocabulary is found before training rather than at its batch."""
    return int(np.memmap(path, dtype=dtype, mode="r").max()) if size else 0


def check_settings(cfg: TrainConfig) -> None:
    if cfg.init_from not in ("scratch", "resume", *checkpoint.GPT2_NAMES):
        raise UserError(f"init_from must be scratch, resume or one of {checkpoint.GPT2_NAMES}, got '{cfg.init_from}'")
    for name in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_iters", "eval_interval",
                 "log_interval", "vocab_multiple", "tensor_parallel"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "max_iters", "warmup_iters",
                 "lr_decay_iters"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must be at least 0, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise UserError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")


def check_out_dir(out_dir: str) -> None:
    """Make out_dir, and fail now rather than at the first checkpoint, after the training time is spent, if a
    checkpoint could not be written there."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"out_dir {out_dir} cannot hold checkpoints: {e.strerror or e}") from None


def rank_0_checks(cfg: TrainConfig, proc: Process) -> None:
    """What only rank 0 will need, checked before any training time is spent: out_dir can hold checkpoints, and
    wandb is installed when it logs there. Under torchrun every process learns the answer, so all of them leave
    together (rank 0 saying why) rather than the others waiting on it, or failing in its place."""
    message = None
    if proc.master:
        try:
            if not cfg.eval_only:
                check_out_dir(cfg.out_dir)
            if cfg.wandb_log:
                configurator.need("wandb", "wandb_log=True")
        except UserError as e:
            message = str(e)
    if proc.distributed:
        shared = [message]
        dist.broadcast_object_list(shared, src=0)
        message = shared[0]
    if message is not None:
        raise UserError(message if proc.master else "")


def refuse_together(proc: Process, check: Callable[..., None], *args: Any) -> None:
    """Run a check that every process makes alike; if it refuses, every process stops, and rank 0 says why."""
    try:
        check(*args)
    except UserError as e:
        raise UserError(str(e) if proc.master else "") from None


def check_run(cfg: TrainConfig, proc: Process, dtype: torch.dtype) -> None:
    """Refuse, before a model is built, fp8=True where it cannot run, a sharded layout that cannot be built
    (parallel.check_layout), or what that does not combine with."""
    if cfg.fp8:
        runtime.check_fp8(proc.device)
    if cfg.dry_run:  # a dry run accounts the model in one process, whatever the layout
        return
    parallel.check_layout(proc.world, cfg.tensor_parallel, cfg.fsdp, proc.distributed)
    if not proc.sharded:
        return
    what = "fsdp=True" if cfg.fsdp else f"tensor_parallel={cfg.tensor_parallel}"
    if dtype == torch.float16:
        raise UserError(f"{what} needs dtype bfloat16 or float32: float16's gradient scaler does not take shards")
    if cfg.fp8:
        raise UserError(f"fp8=True with {what} is not supported: train FP8 on one GPU or with DDP")


def graph_blocker(cfg: TrainConfig, proc: Process, dtype: torch.dtype) -> str | None:
    """What keeps cuda_graph=True from capturing this run's step (the step of one GPU), or None."""
    if proc.device.type != "cuda":
        return f"no CUDA device ({proc.device})"
    if proc.distributed:
        return "several processes"
    if dtype == torch.float16:
        return "float16, whose gradient scaler waits on the host"
    if cfg.activation_checkpointing:
        return "activation_checkpointing (its recomputation reads the RNG state, which a capture cannot)"
    return None


@dataclass
class Process:
    """This process: its rank among `world` processes (one per device under torchrun) and its device."""

    rank: int
    local_rank: int
    world: int
    device: torch.device
    distributed: bool  # started by torchrun: a process group, and the model wrapped in DDP (or sharded)
    tp: int = 1  # tensor-parallel degree: ranks dp * tp .. dp * tp + tp - 1 share a batch and split the model
    mesh: DeviceMesh | None = None  # (dp, tp), for a sharded model (fsdp or tensor parallelism)

    @property
    def master(self) -> bool:  # rank 0 logs and saves
        return self.rank == 0

    @property
    def dp_rank(self) -> int:  # which share of the batch this process reads
        return self.rank // self.tp

    @property
    def dp_world(self) -> int:  # how many shares there are
        return self.world // self.tp

    @property
    def sharded(self) -> bool:
        return self.mesh is not None


def setup_process(cfg: TrainConfig) -> Process:
    """One process per device under torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE); else a single process."""
    if "RANK" not in os.environ:
        return Process(0, 0, 1, runtime.resolve_device(cfg.device), distributed=False)
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    tp = cfg.tensor_parallel
    # before the process group: every process can leave at once (rank 0 says why, once)
    if world % tp:
        raise UserError("" if rank else f"tensor_parallel={tp} must divide the number of processes ({world})")
    if cfg.gradient_accumulation_steps % (world // tp):
        shares = f"the number of processes ({world})" if tp == 1 else \
            f"the number of data-parallel processes ({world} / tensor_parallel {tp} = {world // tp})"
        raise UserError("" if rank else f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be "
                        f"divisible by {shares}")
    dist.init_process_group(backend=cfg.backend)
    device = runtime.resolve_device(f"cuda:{local_rank}" if cfg.backend == "nccl" else cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = parallel.make_mesh(device.type, world, tp) if cfg.fsdp or tp > 1 else None
    return Process(rank, local_rank, world, device, distributed=True, tp=tp, mesh=mesh)


def data_meta(cfg: TrainConfig, required: bool = True) -> dict[str, Any]:
    """The dataset's meta.json; without one (and not required: a dry run), GPT-2's, or the preset's vocabulary."""
    try:
        return read_meta(os.path.join(cfg.data_root, cfg.dataset))
    except UserError:
        if required:
            raise
        return GPT2_META | {"vocab_size": PRESETS.get(cfg.preset, {}).get("vocab_size", GPT2_META["vocab_size"])}


def model_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The model settings given (not None), to be laid over the preset."""
    return {k: v for k in MODEL_KEYS if (v := getattr(cfg, k)) is not None}


def model_config(cfg: TrainConfig, meta: dict[str, Any]) -> GPTConfig:
    """The preset with every model setting given over it, and the data's vocabulary padded to vocab_multiple."""
    vocab = -(-meta["vocab_size"] // cfg.vocab_multiple) * cfg.vocab_multiple
    try:
        return resolve_config(cfg.preset, **model_settings(cfg), vocab_size=vocab)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_resume(cfg: TrainConfig, model_args: dict[str, Any]) -> None:
    """Refuse settings that would build another model than the checkpoint's: a preset (every setting it resolves
    to, with the settings given over it) or a setting given that differs. The vocabulary comes from the data;
    dropout, which changes no weight, may differ."""
    asked = model_settings(cfg)
    if cfg.preset:
        try:
            asked = asdict(resolve_config(cfg.preset, **asked))
        except ValueError as e:
            raise UserError(str(e)) from None
    for k, v in asked.items():
        if k not in ("vocab_size", "dropout") and model_args.get(k) != v:
            source = f" (from preset '{cfg.preset}')" if cfg.preset and getattr(cfg, k, None) is None else ""
            raise UserError(f"the checkpoint in {cfg.out_dir} has {k}={model_args.get(k)!r}, the settings ask for "
                            f"{k}={v!r}{source}: resume with the checkpoint's settings, or train from scratch "
                            "elsewhere")


def build_model(cfg: TrainConfig, meta: dict[str, Any], device: torch.device,
                sharded: bool = False) -> tuple[GPT, dict[str, Any] | None]:
    """The model from scratch, from the checkpoint in out_dir (settings given must match it), or OpenAI's GPT-2;
    and the checkpoint when resuming. A dry run builds it on the meta device: shapes only, no memory. A model to
    be sharded is built on its device (a CPU takes minutes to draw billions of weights), and when resuming its
    weights are left to `restore`, which reads each process's shards only: here the checkpoint's header is read."""
    data_dir = os.path.join(cfg.data_root, cfg.dataset)
    if cfg.init_from == "scratch":
        with torch.device("meta" if cfg.dry_run else device) if cfg.dry_run or sharded else contextlib.nullcontext():
            return GPT(model_config(cfg, meta)), None
    if cfg.init_from == "resume":
        path = checkpoint.locate(cfg.out_dir)
        if sharded and os.path.isdir(path):
            ckpt = checkpoint.load_header(path)
        else:  # mapped when sharded: restore reads the weights it needs
            ckpt = checkpoint.load(cfg.out_dir, map_location="cpu" if sharded else device, mmap=sharded,
                                   optimizer=True)
        if ckpt["meta"]["tokenizer"] != meta["tokenizer"]:
            raise UserError(f"the checkpoint was trained on {ckpt['meta']['tokenizer']} tokens, {data_dir} has "
                            f"{meta['tokenizer']} tokens")
        check_resume(cfg, ckpt["model_args"])
        if sharded:
            with torch.device(device):
                return GPT(GPTConfig(**ckpt["model_args"] | {"dropout": cfg.dropout})), ckpt | {"path": path}
        return checkpoint.model_from(ckpt, dropout=cfg.dropout), ckpt
    if meta["tokenizer"] != "gpt2":
        raise UserError(f"{cfg.init_from} needs GPT-2 BPE data, {data_dir} has {meta['tokenizer']} tokens")
    if cfg.dry_run:  # the same shapes as OpenAI's weights, without downloading them
        with torch.device("meta"):
            model = GPT(resolve_config(cfg.init_from, dropout=cfg.dropout))
    else:
        model = checkpoint.pretrained(cfg.init_from, cfg.dropout)
    if cfg.block_size is not None and cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    return model, None


@dataclass
class Progress:
    """How far training has come: all a checkpoint needs, with the weights and optimizer, to resume exactly."""

    iter_num: int = 0
    best_val_loss: float = float("inf")
    batch_pos: int = 0  # global index of the first training batch of the next iteration


def restore(ckpt: dict[str, Any], model: GPT, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            proc: Process) -> Progress:
    """Optimizer (and for a sharded model, the weights), gradient scaler and random state as the checkpoint left
    them; returns its progress. How the optimizer steps (fused, foreach, capturable) stays this machine's choice:
    the checkpoint may come from another."""
    how = {k: optimizer.defaults[k] for k in ("fused", "foreach", "capturable") if k in optimizer.defaults}
    names = checkpoint.optimizer_names(model, optimizer)
    if proc.sharded:
        restore_shards(ckpt, model, optimizer, proc, names)
    else:  # a sharded checkpoint's optimizer state, read whole, is keyed by name
        optimizer.load_state_dict(checkpoint.optimizer_by_position(ckpt["optimizer"], names))
    for group in optimizer.param_groups:
        group.update(how)  # set_capturable then puts the step counts where these kernels want them
    scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]  # rank 0's; a sharded checkpoint has every process's, used where the layout is the same
    if len(ckpt.get("rng_ranks", [])) == proc.world and ckpt.get("tensor_parallel") == proc.tp:
        rng = ckpt["rng_ranks"][proc.rank]
    torch.set_rng_state(rng["torch"].cpu())
    if proc.device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), proc.device)
    return Progress(ckpt["iter_num"], ckpt["best_val_loss"], ckpt["batch_pos"])


def restore_shards(ckpt: dict[str, Any], model: GPT, optimizer: torch.optim.Optimizer, proc: Process,
                   names: list[str]) -> None:
    """A sharded model's weights and optimizer state from the checkpoint. Saved sharded with the same tensor-
    parallel degree (any number of FSDP processes), each process reads just its shards; otherwise (a single file,
    another degree) each reads the whole state and keeps its part."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    path = ckpt["path"]
    if os.path.isdir(path) and ckpt["tensor_parallel"] == proc.tp:
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
        checkpoint.load_into(path, state)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        return
    whole = checkpoint.load_sharded(path) if os.path.isdir(path) else ckpt
    weights = parallel.reorder_rows(whole["model"], model.config, proc.tp, to_rank_major=True)
    osd = checkpoint.optimizer_by_name(whole["optimizer"], names)  # ckpt.pt's is keyed by position
    osd = osd | {"state": parallel.reorder_rows(osd["state"], model.config, proc.tp, to_rank_major=True)}
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, osd, options=options)


@dataclass
class Run:
    """What the training loop works with: three views of one set of weights. `model` is the plain module (what is
    saved), `eval_model` the same compiled (what is evaluated), `step_model` that wrapped in DDP when distributed
    (what is trained). A sharded model is all three: sharded and compiled in place."""

    cfg: TrainConfig
    proc: Process
    meta: dict[str, Any]
    model: GPT
    eval_model: torch.nn.Module
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ctx: contextlib.AbstractContextManager
    train_data: Batches
    evals: dict[str, Windows]  # the same batches at every evaluation
    progress: Progress
    history: dict[str, list] = field(default_factory=lambda: {"train_loss": [], "eval": []})  # for the tests
    pace_shown: bool = False  # the first log also says how long max_iters will take

    @property
    def accum(self) -> int:  # micro-steps per iteration in this process
        return self.cfg.gradient_accumulation_steps // self.proc.dp_world


def checkpoint_state(run: Run) -> dict[str, Any]:
    """The checkpoint: plain data (model_from rebuilds the model from it), saved from the unwrapped model."""
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()} | checkpoint_header(run)


def checkpoint_header(run: Run) -> dict[str, Any]:
    """All of the checkpoint but the model and optimizer tensors."""
    return {
        "scaler": run.scaler.state_dict(), "model_args": asdict(run.model.config), "config": asdict(run.cfg),
        "meta": run.meta, "iter_num": run.progress.iter_num, "best_val_loss": run.progress.best_val_loss,
        "batch_pos": run.progress.batch_pos, "rng": rng_state(run.proc.device),
    }


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def save_checkpoint(run: Run, best: bool = False) -> str | None:
    """Every process calls this. A sharded model is saved sharded, each process writing its own part (with the
    random state of each process, and the model's original config: the tensor-parallel split changes the head
    counts of its attention modules, not of the config); any other by rank 0 as one file. Returns the path on
    rank 0."""
    cfg, proc = run.cfg, run.proc
    if proc.sharded:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        rngs: list[Any] = [None] * proc.world
        dist.all_gather_object(rngs, rng_state(proc.device))
        header = checkpoint_header(run) | {"tensor_parallel": proc.tp, "rng_ranks": rngs}
        state = {"model": get_model_state_dict(run.model),
                 "optimizer": get_optimizer_state_dict(run.model, run.optimizer)}
        return checkpoint.save_sharded(state, header, cfg.out_dir, best, proc.rank)
    if proc.master:
        return checkpoint.save(checkpoint_state(run), cfg.out_dir, best=best)
    return None


def start_run(cfg: TrainConfig, proc: Process, meta: dict[str, Any], model: GPT, ckpt: dict[str, Any] | None,
              dtype: torch.dtype) -> Run:
    """Optimizer, scaler and progress (restored when resuming), the batches, the compiled and DDP-wrapped (or
    sharded: parallel.parallelize) model."""
    device = proc.device
    model.activation_checkpointing = cfg.activation_checkpointing
    model.to(device)
    if cfg.fp8:
        runtime.to_float8(model)
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"{os.path.join(cfg.data_root, cfg.dataset)} has {meta['vocab_size']} token ids, the model "
                        f"only {model.config.vocab_size}")
    regions = []
    if proc.sharded:
        regions = parallel.parallelize(model, proc.mesh, cfg.fsdp, cfg.activation_checkpointing, cfg.compile, dtype)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    progress = restore(ckpt, model, optimizer, scaler, proc) if ckpt is not None else Progress()
    set_capturable(optimizer, device, cfg.cuda_graph)  # either way: a checkpoint may come from the other

    def path(split: str) -> str:
        return os.path.join(cfg.data_root, cfg.dataset, f"{split}.bin")

    T, vocab = model.config.block_size, meta["vocab_size"]  # ids in the padding rows mean nothing to the tokenizer
    train_data = Batches(path("train"), meta["dtype"], T, cfg.batch_size, vocab, cfg.seed)
    evals = {split: Windows(path(split), meta["dtype"], T, cfg.batch_size, vocab, cfg.eval_iters)
             for split in ("train", "val")}
    ctx = runtime.autocast(device, dtype)
    eval_model = model
    if cfg.compile:
        batch = train_data.get(progress.batch_pos + proc.dp_rank, device)
        eval_model = runtime.maybe_compile(model, *batch, ctx, regions=regions if proc.sharded else None)
    step_model = eval_model
    if proc.distributed and not proc.sharded:
        step_model = DDP(eval_model, device_ids=[proc.local_rank] if device.type == "cuda" else None)
    return Run(cfg, proc, meta, model, eval_model, step_model, optimizer, scaler, ctx, train_data, evals, progress)


def set_capturable(optimizer: torch.optim.Optimizer, device: torch.device, on: bool) -> None:
    """Whether a CUDA graph can hold the optimizer step: then its state and the learning rate live on the device
    (the rate a tensor that set_lr fills, so the schedule reaches the replayed step); else the rate is a number."""
    for group in optimizer.param_groups:
        group["capturable"] = on
        group["lr"] = torch.tensor(float(group["lr"]), device=device) if on else float(group["lr"])
        if group.get("fused") or on:  # these kernels keep their step counts beside the weights
            for p in group["params"]:
                if "step" in optimizer.state.get(p, {}):
                    optimizer.state[p]["step"] = optimizer.state[p]["step"].to(p.device, torch.float32)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class BatchSource(Protocol):
    """Anything that gives batch number k on a device: Batches, or bench.py's one fixed random batch."""

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]: ...


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, ctx: Any,
               data: BatchSource, index: int, stride: int, batch: tuple[torch.Tensor, torch.Tensor], accum: int,
               grad_clip: float) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One optimizer step over accum micro-batches. `batch` is data's batch number `index`, already on the device;
    each micro-batch after it is `stride` further on (stride = the number of processes: rank r reads batches
    r, r + world, ...), and each is read while the device still works on the one before. A DDP model syncs
    gradients on the last micro-step only. Returns the mean loss and whether the update was applied (device
    tensors: reading them waits for the device), and the batch that follows, to start the next step with. So does
    an FSDP model, keeping whole gradients until then (more memory, one reduction per step)."""
    loss_sum = torch.zeros((), device=batch[0].device)
    for m in range(accum):
        sync = model.no_sync() if isinstance(model, DDP) and m < accum - 1 else contextlib.nullcontext()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP: the gradients are reduce-scattered once, after
            # the last micro-step
            model.set_requires_gradient_sync(m == accum - 1)
        with sync:
            with ctx:
                loss = model(*batch)[1] / accum
            batch = data.get(index + (m + 1) * stride, batch[0].device)
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    applied = apply_update(model, optimizer, scaler, loss_sum, grad_clip)
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, applied, batch


def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 loss: torch.Tensor, grad_clip: float) -> torch.Tensor:
    """Clip the gradients and step, unless the loss or the gradient norm is NaN or inf: then the update is skipped,
    and the weights stay as they were. Returns whether it was applied, a device tensor. The fused AdamW (CUDA)
    skips inside its kernel, told by found_inf as GradScaler tells it: no wait for the device."""
    norm = None
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # a no-op unless float16's scaler is on
        norm = parallel.plain(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if scaler.is_enabled():  # float16: the scaler skips updates with inf/NaN gradients itself, and rescales
        scaler.step(optimizer)
        scaler.update()
        return torch.isfinite(loss)
    if norm is None:
        norm = parallel.total_norm([p.grad for p in model.parameters() if p.grad is not None])
    applied = torch.isfinite(loss) & torch.isfinite(norm)  # the norm is the same on every DDP process
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~applied).float()
        try:
            with parallel.plain_tensors_replicated(parallel.is_sharded(optimizer.param_groups[0]["params"][0])):
                optimizer.step()
        finally:
            del optimizer.found_inf
    elif applied:  # other optimizers need the answer on the host: one wait per step (on a CPU, none)
        optimizer.step()
    return applied


class GraphedStep:
    """train_step as one CUDA graph (cuda_graph=True): the first WARMUP steps run uncaptured on a side stream (they
    are training steps; capture needs the kernels' workspaces made first, and a compiled model its compilation
    done), the next is captured and every step from then on is a replay: the batch is copied into fixed buffers,
    the loss and the update flag come out of fixed ones. The gradients live in the graph's memory, written anew by
    every replay."""

    WARMUP = 3

    def __init__(self, run: Run) -> None:
        self.run = run
        self.eager_steps = 0
        self.side = torch.cuda.Stream(run.proc.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        ctx = run.ctx  # autocast's cache of cast weights would be captured stale: off while capturing
        self.ctx = torch.autocast("cuda", ctx.fast_dtype, cache_enabled=False) if isinstance(ctx, torch.autocast) \
            else ctx

    def __call__(self, index: int, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                        tuple[torch.Tensor, ...]]:
        run, accum = self.run, self.run.accum
        if self.eager_steps < self.WARMUP:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):  # under the capture's autocast: a compiled model compiles for it
                out = train_step(run.step_model, run.optimizer, run.scaler, self.ctx, run.train_data, index=index,
                                 stride=1, batch=batch, accum=accum, grad_clip=run.cfg.grad_clip)
            torch.cuda.current_stream().wait_stream(self.side)
            self.eager_steps += 1
            return out
        batches = [batch] + [run.train_data.get(index + m, batch[0].device) for m in range(1, accum)]
        if self.graph is None:
            self.inputs = [(x.clone(), y.clone()) for x, y in batches]
            self.capture()
        else:
            for (x, y), (bx, by) in zip(self.inputs, batches, strict=True):
                x.copy_(bx, non_blocking=True)
                y.copy_(by, non_blocking=True)
        self.graph.replay()
        return *self.outputs, run.train_data.get(index + accum, batch[0].device)

    def capture(self) -> None:
        run = self.run
        run.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them in the graph's memory
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss_sum = torch.zeros((), device=run.proc.device)
            for x, y in self.inputs:
                with self.ctx:
                    loss = run.step_model(x, y)[1] / run.accum
                loss.backward()
                loss_sum += loss.detach()
            applied = apply_update(run.step_model, run.optimizer, run.scaler, loss_sum, run.cfg.grad_clip)
        self.outputs = (loss_sum, applied)


class Watchdog:
    """Counts the updates apply_update skipped, on the device; read when a log line syncs anyway. A run of
    max_skipped_steps of them in a row means training diverged: the run stops with one line."""

    def __init__(self, device: torch.device) -> None:
        self.in_a_row = torch.zeros((), device=device)
        self.since_log = torch.zeros((), device=device)

    def record(self, applied: torch.Tensor) -> None:
        skipped = (~applied).float()
        self.in_a_row = (self.in_a_row + 1) * skipped
        self.since_log += skipped

    def check(self, run: Run) -> None:
        skipped = int(self.since_log.item())
        self.since_log.zero_()
        in_a_row = self.in_a_row.clone()
        if run.proc.distributed:
            dist.all_reduce(in_a_row, op=dist.ReduceOp.MAX)
        in_a_row = int(in_a_row.item())
        iter_num = run.progress.iter_num
        if skipped and run.proc.master:
            print(f"iter {iter_num}: {skipped} update(s) skipped since the last log line: the loss or the gradient "
                  "norm was NaN or inf")
        limit = run.cfg.max_skipped_steps
        if limit and in_a_row >= limit:
            if not run.proc.master:
                raise UserError  # rank 0 says why
            raise UserError(f"the loss or the gradient norm was NaN or inf for {in_a_row} steps in a row, up to iter "
                            f"{iter_num}: training diverged. Those updates were skipped, so the weights are still "
                            f"finite; {os.path.join(run.cfg.out_dir, checkpoint.CKPT_FILE)} holds the last "
                            "evaluation's state: resume from it with a lower learning_rate or more warmup_iters")


def estimate_loss(model: torch.nn.Module, evals: dict[str, Windows], cfg: TrainConfig, device: torch.device,
                  ctx: Any, rank: int, world: int, show: bool | None = None) -> dict[str, float]:
    """Mean loss per token over the same windows of each split every time, shared out across the data-parallel
    shares (rank of world; the processes of a tensor-parallel group evaluate the same batches, and so add the same
    sums and counts alike). show: whether this process prints the progress of a long evaluation (rank 0's).

    A compiled model without dropout is evaluated through its training graph (train mode, gradients on, nothing
    kept): it computes the same loss, where an inference graph would be a second compile before the first step
    (12 s for GPT-2 124M on an H100) to save ~1 ms a batch."""
    same_graph = cfg.compile and not cfg.dropout
    show = rank == 0 if show is None else show
    model.train(same_graph)
    out = {}
    shown = time.perf_counter()
    for split, windows in evals.items():
        total = torch.zeros(2, device=device)  # the sum of the token losses, the number of tokens
        n = windows.n_batches
        # every process runs as many forward passes (a sharded model gathers its weights in each, all together):
        # where the batches run out, batch 0 again, not counted
        for k in range(rank, -(-n // world) * world, world):
            x, y = windows.get(k if k < n else 0, device)
            with ctx, torch.set_grad_enabled(same_graph):
                loss = model(x, y)[1].detach().float()  # the mean over the tokens whose target is not -1
            counted = (y != -1).sum() * (k < n)
            total += torch.stack([loss * counted, counted])
            if show and time.perf_counter() - shown > EVAL_PROGRESS_S:  # a long evaluation shows it is alive
                print(f"evaluating the {split} split: batch {k + 1} of {windows.n_batches}", flush=True)
                shown = time.perf_counter()
        if dist.is_initialized():  # over every process, so that all agree (on a checkpoint to save, say): a
            # tensor-parallel group adds its identical sums tp times, and its counts
            dist.all_reduce(total)
        loss_sum, count = total.tolist()
        out[split] = loss_sum / count
    model.train()
    return out


def evaluate_and_save(run: Run, lr: float) -> None:
    """Evaluate, log (rank 0), and save a checkpoint if val loss improved (or always_save_checkpoint)."""
    cfg, proc, progress = run.cfg, run.proc, run.progress
    losses = estimate_loss(run.eval_model, run.evals, cfg, proc.device, run.ctx, proc.dp_rank, proc.dp_world,
                           proc.master)
    run.history["eval"].append((progress.iter_num, losses["train"], losses["val"]))
    if proc.master:
        peak = ""
        if proc.device.type == "cuda":
            peak = f", peak memory {torch.cuda.max_memory_allocated(proc.device) / 2**30:.2f} GiB"
        print(f"step {progress.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{peak}")
        if cfg.wandb_log:
            import wandb

            wandb.log({"iter": progress.iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})
    improved = losses["val"] < progress.best_val_loss
    if (improved or cfg.always_save_checkpoint) and progress.iter_num > 0 and not cfg.eval_only:
        progress.best_val_loss = min(progress.best_val_loss, losses["val"])
        path = save_checkpoint(run, best=improved)
        if proc.master:
            best = checkpoint.SHARDED[checkpoint.BEST_FILE] if proc.sharded else checkpoint.BEST_FILE
            print(f"saved checkpoint to {path}" + (f" (the best so far, also {best})" if improved else ""))


def log_step(run: Run, loss_sum: torch.Tensor, lr: float, since: float, iters: int, steady: bool = True) -> None:
    """Record the mean training loss of the step (over all processes) and print it with its speed: the time per
    iteration of the `iters` steps since `since` (a perf_counter reading). The first steady interval (not the
    first steps of the run, nor a CUDA graph's warm-up and capture) also says how long the rest will take."""
    if run.proc.distributed:
        dist.all_reduce(loss_sum)  # gloo has no AVG: sum, then divide
    loss = loss_sum.item() / run.proc.world  # waits for the device: the steps queued are done
    dt = (time.perf_counter() - since) / iters  # only now: a CUDA graph's steps are queued in microseconds
    run.history["train_loss"].append((run.progress.iter_num, loss))
    if run.proc.master:
        tokens_per_iter = run.cfg.gradient_accumulation_steps * run.cfg.batch_size * run.model.config.block_size
        mfu = run.model.estimate_mfu(tokens_per_iter // run.proc.world, dt, runtime.peak_flops(run.proc.device))
        mfu_text = f", mfu {mfu * 100:.1f}%" if mfu is not None else ""
        if run.proc.device.type == "cuda":  # rank 0's: under FSDP or tensor parallelism the others' are alike
            mfu_text += f", peak mem {torch.cuda.max_memory_allocated(run.proc.device) / 2**30:.1f} GiB"
        print(f"iter {run.progress.iter_num}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
              f"{tokens_per_iter / dt:,.0f} tok/s{mfu_text}")
        if steady and not run.pace_shown:
            remaining = (run.cfg.max_iters - run.progress.iter_num) * dt
            print(f"at this pace the remaining {run.cfg.max_iters - run.progress.iter_num:,} iterations take about "
                  f"{duration(remaining)}, evaluations not included", flush=True)
            run.pace_shown = True


class StopRequest:
    """Within `with`, the first SIGTERM (what a cluster scheduler sends before preemption) or Ctrl-C asks the run
    to stop at the next step boundary, with a checkpoint; a second Ctrl-C stops it at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the signal that asked, once one has
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # only the main thread may take signals
            # a signal the user's shell ignores (nohup, a background job) stays ignored
            taken = [s for s in self.SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
            self.previous = {s: signal.signal(s, self.handle) for s in taken}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum: int, frame: object) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def agreed(self, run: Run) -> str | None:
        """The signal to stop for, the same on every process: under torchrun they vote (rank 0's signal names it)."""
        if not run.proc.distributed:
            return self.signal
        vote = torch.tensor(float(self.signal is not None), device=run.proc.device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return (self.signal or "a signal to another process") if vote.item() else None


def stop_and_save(run: Run, reason: str) -> None:
    """Save the state after the step just taken, so that --init_from=resume continues exactly from it."""
    path = save_checkpoint(run)
    if run.proc.master:
        print(f"{reason}: stopped after iter {run.progress.iter_num}, saved checkpoint to {path}; continue with "
              "--init_from=resume", flush=True)


def duration(seconds: float) -> str:
    """A rough human reading of a duration: '45 s', '12 min', '3.4 h', '2.1 days'."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def warn_if_gpu_recipe_on_cpu(cfg: TrainConfig, model: GPT, device: torch.device) -> None:
    """A config made for GPUs (config/train_gpt2.py) on a CPU: say so before minutes of compiling and hours per
    evaluation, rather than leaving the user to wonder."""
    flops = model.flops_per_token() * cfg.gradient_accumulation_steps * cfg.batch_size * model.config.block_size
    if device.type == "cpu" and flops > CPU_WARNING_FLOPS:
        print(f"warning: {flops / 1e12:,.1f} TFLOP per iteration on the CPU: this is a GPU recipe; at the 0.1 "
              f"TFLOP/s of a typical CPU an iteration takes about {duration(flops / CPU_FLOPS)} (the first log line "
              "says how long max_iters would take)", flush=True)


def train(run: Run) -> None:
    """The loop: lr -> evaluation and checkpoint -> accumulated micro-steps and the optimizer step -> log, until
    max_iters or a stop request."""
    with StopRequest() as stop:
        train_steps(run, stop)


def train_steps(run: Run, stop: StopRequest) -> None:
    cfg, proc, progress = run.cfg, run.proc, run.progress
    batch = run.train_data.get(progress.batch_pos + proc.dp_rank, proc.device)
    watchdog = Watchdog(proc.device)
    graphed = GraphedStep(run) if cfg.cuda_graph else None
    t_last = time.perf_counter()
    iters_since_log = 0
    steady = False  # whether the steps since t_last ran at their lasting speed: not the first ones (start-up
    # work: kernel loading, the allocator), nor a CUDA graph's warm-up and capture
    while True:
        lr = get_lr(progress.iter_num, cfg)
        set_lr(run.optimizer, lr)
        due = progress.iter_num % cfg.eval_interval == 0 or progress.iter_num == cfg.max_iters
        # a resumed run evaluates where it starts, if due: a stop may have come between a step and its evaluation
        if cfg.eval_only or (due and (progress.iter_num > 0 or cfg.eval_at_start)):
            evaluate_and_save(run, lr)
            t_last = time.perf_counter()  # evaluation time is not training time: the next log times the steps
            iters_since_log = 0  # after it only
            steady = graphed is None or graphed.graph is not None
        if progress.iter_num >= cfg.max_iters or cfg.eval_only:
            return
        # share r's micro-batches are batch_pos + r, + r + dp_world, ...: the global batch is split across the
        # data-parallel shares (the processes of a tensor-parallel group read the same batches)
        if graphed:
            loss_sum, applied, batch = graphed(progress.batch_pos, batch)
        else:
            loss_sum, applied, batch = train_step(run.step_model, run.optimizer, run.scaler, run.ctx, run.train_data,
                                                  index=progress.batch_pos + proc.dp_rank, stride=proc.dp_world,
                                                  batch=batch, accum=run.accum, grad_clip=cfg.grad_clip)
        watchdog.record(applied)
        progress.iter_num += 1
        progress.batch_pos += cfg.gradient_accumulation_steps
        iters_since_log += 1
        logged = progress.iter_num % cfg.log_interval == 0
        if logged:
            log_step(run, loss_sum, lr, t_last, iters_since_log, steady)
            t_last = time.perf_counter()
            iters_since_log = 0
            steady = graphed is None or graphed.graph is not None
            watchdog.check(run)
        # a single process checks its flag every step; several vote when they log, as logging syncs them anyway
        reason = stop.agreed(run) if logged or not proc.distributed else None
        if reason:
            stop_and_save(run, reason)
            return


def main(argv: list[str]) -> dict[str, list]:
    """Train as the settings say; returns the history of training and evaluation losses."""
    cfg = configurator.load(TrainConfig, argv)
    check_settings(cfg)
    proc = setup_process(cfg)
    dtype = runtime.resolve_dtype(cfg.dtype, proc.device)
    refuse_together(proc, check_run, cfg, proc, dtype)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    runtime.enable_tf32(proc.device)
    meta = data_meta(cfg, required=not cfg.dry_run)

    model, ckpt = build_model(cfg, meta, proc.device, sharded=proc.sharded and not cfg.dry_run)
    if proc.tp > 1:  # the sizes the split must divide, known now (from the checkpoint, when resuming)
        refuse_together(proc, parallel.check_sizes, model.config, proc.tp)
    if proc.dp_rank:  # each data-parallel share its own dropout masks; a tensor-parallel group the same ones
        torch.manual_seed(cfg.seed + proc.dp_rank)
    if proc.master:
        print(accounting.table(model))
    if cfg.dry_run:
        print(accounting.dry_run(model.config, cfg.batch_size, cfg.gradient_accumulation_steps, proc.world, dtype,
                                 cfg.activation_checkpointing))
        return {"train_loss": [], "eval": []}
    rank_0_checks(cfg, proc)
    if cfg.cuda_graph and (blocker := graph_blocker(cfg, proc, dtype)):  # a recipe's hint, as compile is
        if proc.master:
            print(f"cuda_graph=True: the step runs without a CUDA graph here: {blocker}")
        cfg = replace(cfg, cuda_graph=False)
    if proc.master:
        warn_if_gpu_recipe_on_cpu(cfg, model, proc.device)
    run = start_run(cfg, proc, meta, model, ckpt, dtype)
    del ckpt  # free its memory before training
    if cfg.wandb_log and proc.master:
        import wandb

        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=asdict(cfg))
    if proc.master:
        tokens = cfg.gradient_accumulation_steps * cfg.batch_size * model.config.block_size
        layout = f" (FSDP {proc.dp_world} x TP {proc.tp})" if cfg.fsdp else f" (TP {proc.tp})" if proc.tp > 1 else ""
        print(f"\n{model.get_num_params() / 1e6:.2f}M parameters (non-embedding), device {proc.device}, {dtype}, "
              f"{proc.world} process(es){layout}, {tokens:,} tokens per iteration")

    train(run)

    if cfg.wandb_log and proc.master:
        wandb.finish()
    if proc.distributed:
        dist.destroy_process_group()
    return run.history


if __name__ == "__main__":
    configurator.run(main)
