"""Train a GPT on one device or several under torchrun (DDP).

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Data are data/<dataset>/{train,val}.bin with their meta.json (see data/*/prepare.py). Checkpoints go to
out_dir/ckpt.pt; init_from=resume continues exactly where it stopped (same losses as an unbroken run).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import accounting
import checkpoint
import configurator
from configurator import UserError
from model import GPT, PRESETS, GPTConfig, preset_config
from tokenizer import GPT2_META, read_meta

MODEL_KEYS = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]


@dataclass
class TrainConfig:
    """Train a GPT (defaults: GPT-2 124M on OpenWebText, as config/train_gpt2.py spells out)."""

    # I/O
    out_dir: str = "out"
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # else only when val loss improves
    init_from: str = "scratch"  # scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl
    seed: int = 1337
    # wandb logging
    wandb_log: bool = False
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    # data
    dataset: str = "openwebtext"
    data_root: str = "data"
    gradient_accumulation_steps: int = 5 * 8  # in total, divided among DDP processes
    batch_size: int = 12  # micro-batch size per process
    # model: a preset (model.PRESETS: gpt1, gpt2, gpt3-xl, llama-small, ...) and settings that override it; a
    # setting left at None is the preset's, else model.GPTConfig's default (GPT-2 124M, here without biases)
    preset: str = ""
    block_size: int | None = None  # None: 1024
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float = 0.0
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
    rope_base: float | None = None
    parallel_block: bool | None = None  # PaLM's parallel attention + MLP
    tie_embeddings: bool | None = None
    activation_checkpointing: bool = False  # recompute each block in the backward pass: less memory, more time
    dry_run: bool = False  # print the model, batch arithmetic and memory estimate, then exit
    vocab_multiple: int = 64  # pad the vocabulary to a multiple of this (faster matmuls); 1 = no padding
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # learning-rate schedule: linear warmup, cosine decay to min_lr
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    # system
    backend: str = "nccl"  # nccl on GPUs, gloo on CPUs
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 elsewhere) | ...
    compile: bool = True  # torch.compile the model; falls back to eager with a warning if it fails


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
    sampler's whole state is the index of the next batch: resuming, or splitting batches across DDP ranks,
    gives exactly the batches an unbroken single process would see.

    Rows are read with seek + fromfile from one open file handle: an np.memmap held for the whole run makes
    resident memory grow with every page touched, and reopening one per batch costs a mapping each time."""

    def __init__(self, path: str, dtype: str, block_size: int, batch_size: int, vocab_size: int, seed: int) -> None:
        if not os.path.isfile(path):
            raise UserError(f"{path} not found: run python {os.path.join(os.path.dirname(path), 'prepare.py')}")
        self.dtype = np.dtype(dtype)
        self.n_tokens = os.path.getsize(path) // self.dtype.itemsize
        if self.n_tokens < block_size + 1:
            raise UserError(f"{path} has {self.n_tokens} tokens, fewer than block_size + 1 = {block_size + 1}")
        self.path, self.file = path, open(path, "rb")  # noqa: SIM115 (held for the run)
        self.block_size, self.batch_size, self.vocab_size, self.seed = block_size, batch_size, vocab_size, seed

    def read(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k on the CPU: x, y of shape (batch_size, block_size), int64."""
        T = self.block_size
        starts = np.random.default_rng((self.seed, k)).integers(0, self.n_tokens - T, size=self.batch_size)
        rows = np.empty((self.batch_size, T + 1), dtype=np.int64)
        for row, start in zip(rows, starts):
            self.file.seek(int(start) * self.dtype.itemsize)
            row[:] = np.fromfile(self.file, dtype=self.dtype, count=T + 1)
        if rows.max() >= self.vocab_size:
            raise UserError(f"{self.path} holds token id {rows.max()} >= vocab_size {self.vocab_size}")
        data = torch.from_numpy(rows)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.read(k)
        if device.type == "cuda":  # pinned memory lets the copy overlap the GPU's work
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N, mps)") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(device.type)
    if available is not None and not available():
        raise UserError(f"device={name} but {device.type.upper()} is not available here")
    return device


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()  # native bf16 (AVX512-BF16 / AMX / Arm BF16)
    return device.type == "mps"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return (torch.bfloat16 if bf16_supported(device) else torch.float16) if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise UserError(f"unknown dtype '{name}' (auto, float32, bfloat16, float16)")
    if dtypes[name] == torch.bfloat16 and not bf16_supported(device):
        raise UserError(f"dtype=bfloat16 but device {device} has no bfloat16 support: use dtype=float16 or float32")
    if dtypes[name] == torch.float16 and device.type != "cuda":
        raise UserError(f"dtype=float16 needs a CUDA device (got {device}): use bfloat16 or float32")
    return dtypes[name]


def enable_tf32(device: torch.device) -> None:
    if device.type == "cuda":  # tf32 tensor cores for any float32 matmuls that remain under autocast
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def maybe_compile(model: GPT, x: torch.Tensor, y: torch.Tensor, ctx: Any) -> torch.nn.Module:
    """torch.compile the model and run one forward/backward to build it; if that fails, warn once and return
    the eager model. The trial runs under fork_rng and its gradients are dropped, so it changes no state."""
    try:
        compiled = torch.compile(model)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), ctx:
            compiled(x, y)[1].backward()
    except torch.OutOfMemoryError:
        raise  # the batch does not fit: not a compiler problem, and eager would not fit either
    except Exception as e:  # noqa: BLE001 (any compiler failure: no C compiler, unsupported op, ...)
        reason = str(e).splitlines()[0][:200] if str(e) else ""
        warnings.warn(f"torch.compile failed, running eager: {type(e).__name__}: {reason}", stacklevel=2)
        compiled = model
    model.zero_grad(set_to_none=True)
    return compiled


def data_meta(cfg: TrainConfig, required: bool = True) -> dict[str, Any]:
    """The dataset's meta.json; without one (and not required: a dry run), GPT-2's, or the preset's vocabulary."""
    try:
        return read_meta(os.path.join(cfg.data_root, cfg.dataset))
    except UserError:
        if required:
            raise
        return GPT2_META | {"vocab_size": PRESETS.get(cfg.preset, {}).get("vocab_size", GPT2_META["vocab_size"])}


def model_config(cfg: TrainConfig, meta: dict[str, Any]) -> GPTConfig:
    """The preset with every model setting given over it (none: GPTConfig's, minus biases); the data's vocab, padded."""
    vocab = -(-meta["vocab_size"] // cfg.vocab_multiple) * cfg.vocab_multiple
    settings = {k: v for k in MODEL_KEYS if (v := getattr(cfg, k)) is not None} | {"vocab_size": vocab}
    try:
        return preset_config(cfg.preset, **settings) if cfg.preset else GPTConfig(**{"bias": False} | settings)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_resume(cfg: TrainConfig, model_args: dict[str, Any]) -> None:
    """Refuse a preset or model setting that differs from the checkpoint's; dropout (no weight) may change."""
    asked = PRESETS.get(cfg.preset, {}) | {k: v for k in MODEL_KEYS if (v := getattr(cfg, k)) is not None}
    for k, v in asked.items():
        if k not in ("vocab_size", "dropout") and model_args.get(k) != v:
            raise UserError(f"the checkpoint in {cfg.out_dir} has {k}={model_args.get(k)!r}, the settings ask for "
                            f"{k}={v!r}: resume with the checkpoint's settings, or train from scratch elsewhere")


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, ctx: Any,
               batch: tuple[torch.Tensor, torch.Tensor], next_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
               accum: int, grad_clip: float) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One optimizer step over accum micro-batches, starting with `batch`. next_batch(m) gives the batch after
    micro-step m and is called while the device still works on m. A DDP model syncs gradients on the last
    micro-step only. Returns the mean loss (a device tensor: reading it waits for the device) and the next batch."""
    loss_sum = torch.zeros((), device=batch[0].device)
    for m in range(accum):
        sync = model.no_sync() if isinstance(model, DDP) and m < accum - 1 else contextlib.nullcontext()
        with sync:
            with ctx:
                loss = model(*batch)[1] / accum
            batch = next_batch(m)
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, batch


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, evals: dict[str, Batches], cfg: TrainConfig, device: torch.device,
                  ctx: Any, rank: int, world: int) -> dict[str, float]:
    """Mean loss over the same eval_iters batches of each split every time, shared out across DDP ranks."""
    model.eval()
    out = {}
    for split, batches in evals.items():
        total = torch.zeros((), device=device)
        for k in range(rank, cfg.eval_iters, world):
            x, y = batches.get(k, device)
            with ctx:
                total += model(x, y)[1].float()
        if world > 1:
            dist.all_reduce(total)
        out[split] = total.item() / cfg.eval_iters
    model.train()
    return out


def main(argv: list[str]) -> dict[str, Any]:
    cfg = configurator.load(TrainConfig, argv)
    if cfg.init_from not in ("scratch", "resume", *checkpoint.GPT2_NAMES):
        raise UserError(f"init_from must be scratch, resume or one of {checkpoint.GPT2_NAMES}, got '{cfg.init_from}'")
    for name in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_iters", "eval_interval",
                 "log_interval", "vocab_multiple"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")

    # distributed setup: one process per device under torchrun
    ddp = "RANK" in os.environ  # set by torchrun
    rank, local_rank, world = 0, 0, 1
    if ddp:
        rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        dist.init_process_group(backend=cfg.backend)
        device = resolve_device(f"cuda:{local_rank}" if cfg.backend == "nccl" else cfg.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        device = resolve_device(cfg.device)
    master = rank == 0
    if cfg.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible "
                        f"by the number of processes ({world})")
    accum = cfg.gradient_accumulation_steps // world
    dtype = resolve_dtype(cfg.dtype, device)
    ctx = autocast(device, dtype)
    torch.manual_seed(cfg.seed + rank)
    enable_tf32(device)

    data_dir = os.path.join(cfg.data_root, cfg.dataset)
    meta = data_meta(cfg, required=not cfg.dry_run)

    # model: from scratch, from the checkpoint (settings given must match it), or OpenAI's GPT-2
    ckpt = None
    if cfg.init_from == "scratch":
        with torch.device("meta") if cfg.dry_run else contextlib.nullcontext():  # a dry run allocates nothing
            model = GPT(model_config(cfg, meta))
    elif cfg.init_from == "resume":
        ckpt = checkpoint.load(cfg.out_dir, map_location=device)
        if ckpt["meta"]["tokenizer"] != meta["tokenizer"]:
            raise UserError(f"the checkpoint was trained on {ckpt['meta']['tokenizer']} tokens, {data_dir} has "
                            f"{meta['tokenizer']} tokens")
        check_resume(cfg, ckpt["model_args"])
        model = checkpoint.model_from(ckpt, dropout=cfg.dropout)
    else:
        if meta["tokenizer"] != "gpt2":
            raise UserError(f"{cfg.init_from} needs GPT-2 BPE data, {data_dir} has {meta['tokenizer']} tokens")
        model = checkpoint.pretrained(cfg.init_from, cfg.dropout)
        if cfg.block_size is not None and cfg.block_size < model.config.block_size:
            model.crop_block_size(cfg.block_size)
    if master:
        print(accounting.table(model))
    if cfg.dry_run:
        print(accounting.dry_run(model.config, cfg.batch_size, cfg.gradient_accumulation_steps, world, dtype,
                                 cfg.activation_checkpointing))
        return {"train_loss": [], "eval": []}
    model.activation_checkpointing = cfg.activation_checkpointing
    model.to(device)
    block_size = model.config.block_size
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"{data_dir} has {meta['vocab_size']} token ids, the model only {model.config.vocab_size}")

    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    iter_num, best_val_loss, batch_pos = 0, float("inf"), 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss, batch_pos = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["batch_pos"]
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        del ckpt  # free the memory before training

    def batches(split: str, seed: int) -> Batches:
        return Batches(os.path.join(data_dir, f"{split}.bin"), meta["dtype"], block_size, cfg.batch_size,
                       meta["vocab_size"], seed)  # ids in the padding rows mean nothing to the tokenizer

    train_data = batches("train", cfg.seed)
    evals = {"train": batches("train", cfg.seed + 1), "val": batches("val", cfg.seed + 1)}  # fixed eval batches

    # global batch index of micro-step m of the iteration starting at pos: rank r takes the r-th slice
    def batch_index(pos: int, m: int) -> int:
        return pos + rank * accum + m

    x, y = train_data.get(batch_index(batch_pos, 0), device)
    raw_model = model
    if cfg.compile:
        model = maybe_compile(model, x, y, ctx)
    train_model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if ddp else model

    if cfg.wandb_log and master:
        import wandb

        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=asdict(cfg))

    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * block_size
    if master:
        print(f"\n{raw_model.get_num_params() / 1e6:.2f}M parameters (non-embedding), device {device}, {dtype}, "
              f"{world} process(es), {tokens_per_iter:,} tokens per iteration")
    history: dict[str, list] = {"train_loss": [], "eval": []}  # returned for tests and bench.py
    t_last, iters_since_log = time.perf_counter(), 0
    while True:
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only:
            losses = estimate_loss(model, evals, cfg, device, ctx, rank, world)
            history["eval"].append((iter_num, losses["train"], losses["val"]))
            if master:
                gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                peak = f", peak memory {gib:.2f} GiB" if gib is not None else ""
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{peak}")
                if cfg.wandb_log:
                    wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})
            if (losses["val"] < best_val_loss or cfg.always_save_checkpoint) and iter_num > 0 and not cfg.eval_only:
                best_val_loss = min(best_val_loss, losses["val"])
                if master:
                    path = checkpoint.save({
                        "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "model_args": asdict(raw_model.config), "config": asdict(cfg),
                        "meta": meta, "iter_num": iter_num, "best_val_loss": best_val_loss, "batch_pos": batch_pos,
                        "rng": {"torch": torch.get_rng_state(),
                                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                    }, cfg.out_dir)
                    print(f"saved checkpoint to {path}")
            t_last = time.perf_counter()  # evaluation time is not training time
        if iter_num >= cfg.max_iters or cfg.eval_only:
            break

        def next_batch(m: int, pos: int = batch_pos) -> tuple[torch.Tensor, torch.Tensor]:
            nxt = (pos, m + 1) if m + 1 < accum else (pos + cfg.gradient_accumulation_steps, 0)
            return train_data.get(batch_index(*nxt), device)

        loss_sum, (x, y) = train_step(train_model, optimizer, scaler, ctx, (x, y), next_batch, accum, cfg.grad_clip)
        iter_num += 1
        batch_pos += cfg.gradient_accumulation_steps
        iters_since_log += 1

        if iter_num % cfg.log_interval == 0:
            if ddp:
                dist.all_reduce(loss_sum)  # gloo has no AVG: sum, then divide
            loss_value = loss_sum.item() / world  # waits for the device, so the timing below is real
            dt = (time.perf_counter() - t_last) / iters_since_log
            t_last, iters_since_log = time.perf_counter(), 0
            history["train_loss"].append((iter_num, loss_value))
            if master:
                mfu = raw_model.estimate_mfu(tokens_per_iter // world, dt, device)
                mfu_text = f", mfu {mfu * 100:.1f}%" if mfu is not None else ""
                print(f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                      f"{tokens_per_iter / dt:,.0f} tok/s{mfu_text}")

    if cfg.wandb_log and master:
        wandb.finish()
    if ddp:
        dist.destroy_process_group()
    return history


if __name__ == "__main__":
    configurator.run(main)
