"""Benchmark training speed: ms/iter, tokens/s, MFU and peak memory of the real model and training step.

    python bench.py --batch_size=12,32                          # GPT-2 124M, random tokens, eager and compiled
    python bench.py --dataset=openwebtext --compile=on --json=bench.json

Every row builds a fresh model, optimizer and GradScaler, runs `warmup` untimed steps (compilation included),
then times `iters` calls of train.train_step, the very step the training loop runs, between two device
synchronizations. Prints a markdown table for the README; --json writes the rows.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

import configurator
import train
from configurator import UserError
from model import GPT, GPTConfig
from tokenizer import read_meta

COLUMNS = {"ms_per_iter": ".1f", "tokens_per_s": ",.0f", "mfu": ".1%", "peak_mem_gib": ".2f", "warmup_s": ".1f",
           "loss": ".3f"}  # the table's numeric columns, with their formats


@dataclass
class BenchConfig:
    """Benchmark GPT training steps: ms/iter, tokens/s, MFU and peak memory, eager and compiled."""

    # model (defaults: GPT-2 124M with the vocabulary padded to 50304, as train.py pads it)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50304
    bias: bool = False
    dropout: float = 0.0
    # one row per (compile, batch size)
    batch_size: str = "12"  # comma list of micro-batch sizes, e.g. 12,32
    gradient_accumulation_steps: int = 1
    compile: str = "both"  # on | off | both
    warmup: int = 10  # untimed steps first: compilation, allocator and kernel autotuning
    iters: int = 20  # timed steps
    grad_clip: float = 1.0  # as train.py: clipping costs an unscale and a norm per step; 0 disables
    # data
    dataset: str = ""  # empty: random tokens; else data_root/dataset/train.bin read by train.Batches
    data_root: str = "data"
    # system
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 elsewhere) | ...
    seed: int = 1337
    json: str = ""  # also write the rows to this path as JSON


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"batch_size must be a comma list of integers, e.g. 12,32; got '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise UserError(f"batch_size needs at least one size, each at least 1; got '{text}'")
    return sizes


def synchronize(device: torch.device) -> None:  # wait for queued work, so wall-clock time covers it
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def batch_source(cfg: BenchConfig, meta: dict[str, Any] | None, batch_size: int,
                 device: torch.device) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """next_batch for train_step: train.bin's batches in turn, or one fixed batch of random tokens (no host work)."""
    if meta is None:
        data = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size + 1), device=device)  # (B, T+1)
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        return lambda m: (x, y)
    path = os.path.join(cfg.data_root, cfg.dataset, "train.bin")
    batches = train.Batches(path, meta["dtype"], cfg.block_size, batch_size, cfg.vocab_size, cfg.seed)
    counter = itertools.count()
    return lambda m: batches.get(next(counter), device)


def bench_row(cfg: BenchConfig, model_cfg: GPTConfig, meta: dict[str, Any] | None, device: torch.device,
              dtype: torch.dtype, compiled: bool, batch_size: int) -> dict[str, Any]:
    """Fresh model, optimizer and scaler; warm up, then time cfg.iters training steps. Returns the metrics."""
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak then covers this row's model, optimizer, activations
    opt = train.TrainConfig()  # the optimizer settings training uses by default
    model = GPT(model_cfg).to(device)
    optimizer = model.configure_optimizers(opt.weight_decay, opt.learning_rate, (opt.beta1, opt.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ctx = train.autocast(device, dtype)
    next_batch = batch_source(cfg, meta, batch_size, device)
    batch, accum = next_batch(-1), cfg.gradient_accumulation_steps

    t0 = time.perf_counter()
    step_model = train.maybe_compile(model, *batch, ctx) if compiled else model
    for _ in range(cfg.warmup):
        _, batch = train.train_step(step_model, optimizer, scaler, ctx, batch, next_batch, accum, cfg.grad_clip)
    synchronize(device)
    t1 = time.perf_counter()
    for _ in range(cfg.iters):
        loss, batch = train.train_step(step_model, optimizer, scaler, ctx, batch, next_batch, accum, cfg.grad_clip)
    final_loss = loss.item()  # waits for the device too
    synchronize(device)
    dt = (time.perf_counter() - t1) / cfg.iters  # seconds per iteration
    tokens_per_iter = batch_size * cfg.block_size * accum
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"status": "compile failed: eager" if compiled and step_model is model else "ok",
            "ms_per_iter": dt * 1000, "tokens_per_s": tokens_per_iter / dt,
            "mfu": model.estimate_mfu(tokens_per_iter, dt, device), "peak_mem_gib": peak,
            "warmup_s": t1 - t0, "loss": final_loss}


def cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], cfg: BenchConfig, n_params: int) -> str:
    """Markdown: a line naming hardware, dtype, model and data, the command, then one table row per run."""
    r = rows[0]
    lines = [f"{r['device']}, torch {r['torch']}, {r['dtype']}; GPT {cfg.n_layer} layers, {cfg.n_head} heads, "
             f"{cfg.n_embd} wide, block {cfg.block_size}, vocab {cfg.vocab_size}, bias {cfg.bias}, "
             f"{n_params / 1e6:.1f}M params (non-embedding); {r['data']} data, gradient accumulation "
             f"{cfg.gradient_accumulation_steps}, {cfg.warmup} warm-up + {cfg.iters} timed steps", "",
             f"`{r['command']}`", "",
             "| compile | batch | ms/iter | tokens/s | MFU | peak mem (GiB) | warm-up (s) | loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        mode = row["compile"] if row["status"] == "ok" else f"{row['compile']} ({row['status']})"
        cells = [mode, str(row["batch_size"]), *(cell(row[key], spec) for key, spec in COLUMNS.items())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> list[dict[str, Any]]:
    cfg = configurator.load(BenchConfig, argv)
    modes = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}
    if cfg.compile not in modes:
        raise UserError(f"compile must be on, off or both, got '{cfg.compile}'")
    sizes = parse_batch_sizes(cfg.batch_size)
    for name, low in (("gradient_accumulation_steps", 1), ("iters", 1), ("warmup", 0)):
        if getattr(cfg, name) < low:
            raise UserError(f"{name} must be at least {low}, got {getattr(cfg, name)}")
    device = train.resolve_device(cfg.device)
    dtype = train.resolve_dtype(cfg.dtype, device)
    try:
        model_cfg = GPTConfig(**{f.name: getattr(cfg, f.name) for f in fields(GPTConfig) if hasattr(cfg, f.name)})
    except ValueError as e:
        raise UserError(str(e)) from None
    meta = read_meta(os.path.join(cfg.data_root, cfg.dataset)) if cfg.dataset else None
    if meta is not None and meta["vocab_size"] > cfg.vocab_size:
        raise UserError(f"{cfg.dataset} has {meta['vocab_size']} tokens, more than vocab_size {cfg.vocab_size}: "
                        f"use --vocab_size={-(-meta['vocab_size'] // 64) * 64}")
    train.enable_tf32(device)
    with torch.device("meta"):  # shape only, no memory
        n_params = GPT(model_cfg).get_num_params()

    common = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
              "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."), "n_params": n_params,
              "command": shlex.join(["python", "bench.py", *argv]), "data": cfg.dataset or "synthetic",
              **asdict(model_cfg), "accum": cfg.gradient_accumulation_steps}
    rows = []
    for mode in modes[cfg.compile]:
        for batch_size in sizes:
            row = common | {"compile": mode, "batch_size": batch_size} | dict.fromkeys(["status", *COLUMNS])
            torch.compiler.reset()  # drop earlier rows' graphs: fresh compile, no recompile limit reached
            try:
                row |= bench_row(cfg, model_cfg, meta, device, dtype, mode == "on", batch_size)
            except torch.OutOfMemoryError:
                row["status"] = "OOM"  # and go on: the next (smaller or eager) row may still fit
            gc.collect()  # the failed row's tensors, held by the traceback until now
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"compile={row['compile']} batch={batch_size}: {row['status']}", flush=True)
            rows.append(row)
    print("\n" + table(rows, cfg, n_params))
    if cfg.json:
        with open(cfg.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {len(rows)} rows to {cfg.json}")
    return rows


if __name__ == "__main__":
    configurator.run(main)
