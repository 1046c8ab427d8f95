"""Benchmark the real model in one of three modes: training (ms/iter, tokens/s, MFU, peak memory), sampling
(tokens/s, ms/token, first token, warm-up), or one attention layer (dense against GPT-3's banded).

    python bench.py --batch_size=12,32                          # GPT-2 124M, random tokens, eager and compiled
    python bench.py --dataset=openwebtext --compile=on --json=bench.json
    python bench.py --mode=sample --batch_size=1,8  # decode speed as sample.py decodes, 256 and 1000 new tokens
    python bench.py --mode=attention --batch_size=8 --seq_lens=2048,4096 --band=256  # GPT-3's banded layers
    torchrun --standalone --nproc_per_node=2 bench.py --preset=gpt2-xl --batch_size=16 --compile=on --fsdp=True

train: each row builds a fresh model, optimizer and GradScaler, runs `warmup` untimed steps (compilation
included), then times `iters` calls of step.Step, the very step the training loop runs. Under torchrun the
model is wrapped in DDP or sharded (--fsdp, --tensor_parallel) by train.py's own assembly (step.Parts),
gradient_accumulation_steps is the total over the data-parallel processes, tokens/s counts all GPUs, MFU and
memory are per GPU (rank 0's).
sample: each row builds a fresh model in the working dtype (as sample.py loads it), runs generate.generate_tokens
once untimed (compilation or capture, a CUDA graph per attention span), then times the same run from a random
prompt.
attention: one attention layer, dense (SDPA) and banded (model.banded_attention), timed forward and forward +
backward on random activations; the banded output is checked against dense attention with the explicit mask.
Timings run between device synchronizations. Prints a markdown table; --json writes the rows.
"""
from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
import contextlib
import gc
import json
import os
import shlex
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

import configurator
import optim
import parallel
import process
import runtime
from configurator import UserError
from dataloader import Batches
from generate import Sampling, generate_tokens
from microbatch import BatchPlan
from model import GPT, CausalSelfAttention, GPTConfig, ModelSettings, banded_attention
from parallel import Layout
from runtime import synchronize
from step import Parts
from datafiles import read_meta

KEYS = {"layout": "layout", "compile": "compile", "cuda_graph": "CUDA graph", "kv_cache": "KV cache",
        "batch_size": "batch", "new_tokens": "new tokens", "seq_len": "T", "attention": "attention"}
COLUMNS = {  # per mode, the table's numeric columns: row key -> (header, format)
    "train": {"ms_per_iter": ("ms/iter", ".1f"), "tokens_per_s": ("tokens/s", ",.0f"), "mfu": ("MFU", ".1%"),
              "peak_mem_gib": ("peak mem (GiB)", ".2f"), "warmup_s": ("warm-up (s)", ".1f"), "loss": ("loss", ".3f")},
    "sample": {"tokens_per_s": ("tokens/s", ",.0f"), "tokens_per_s_per_row": ("tokens/s per row", ",.0f"),
               "ms_per_token": ("ms/token", ".2f"), "first_token_ms": ("first token (ms)", ".1f"),
               "peak_mem_gib": ("peak mem (GiB)", ".2f"), "warmup_s": ("warm-up (s)", ".1f")},
    "attention": {"forward_ms": ("forward (ms)", ".3f"), "step_ms": ("forward + backward (ms)", ".3f"),
                  "max_diff": ("max abs diff vs mask", ".1e"), "peak_mem_gib": ("peak mem (GiB)", ".2f")}}


@dataclass
class BenchConfig(ModelSettings):
    """Benchmark GPT training steps (ms/iter, tokens/s, MFU, peak memory), sampling (tokens/s, ms/token), or one
    attention layer, dense against banded (ms forward and forward + backward). The model settings (preset,
    n_layer, ..., model.ModelSettings) come first, as train.py takes them; by default GPT-2 124M without biases."""

    mode: str = "train"  # train: time training steps | sample: time token generation | attention: one layer
    vocab_size: int | None = None  # as given; None: the dataset's, else the preset's (GPT-2's), padded to
    # vocab_multiple to train, as train.py pads it

    # rows: train, one per (compile, batch size); sample, one per (kv_cache, compile, cuda_graph, batch size,
    # new_tokens)
    batch_size: str = "12"  # comma list of (micro-)batch sizes, e.g. 12,32
    compile: str = ""  # on | off | both; empty: both to train, off to sample (sample.py's default)
    cuda_graph: str = "on"  # sample: on | off | both; on: the eager decode step as CUDA graphs captured by hand
    # (sample.py's default on a GPU); CPU rows run without
    warmup: int = 10  # train: untimed steps (compilation, autotuning); sample runs the timed generation untimed first
    iters: int = 20  # train: timed steps
    gradient_accumulation_steps: int = 1  # train
    grad_clip: float = 1.0  # train, as train.py: clipping costs an unscale and a norm per step; 0 disables
    optimizer: str = "adamw"  # train: adamw | muon, as train.py builds them
    activation_checkpointing: bool = False  # train: recompute each block in the backward pass
    fp8: bool = False  # train: FP8 matrix multiplies (torchao's float8 training, as train.py --fp8=True)
    fsdp: bool = False  # train, under torchrun: FSDP2, as train.py --fsdp=True
    tensor_parallel: int = 1  # train, under torchrun: Megatron's split over this many processes, as train.py
    backend: str = "auto"  # train, under torchrun: auto (nccl on GPUs, gloo on CPUs) | nccl | gloo
    new_tokens: str = "256,1000"  # sample: comma list of tokens generated per timed run
    prompt_tokens: int = 16  # sample: length of the random prompt
    kv_cache: str = "on"  # sample: on | off | both; off recomputes the window every token (eager: compile moot)
    seq_lens: str = "2048,4096"  # attention: comma list of sequence lengths
    band: int = 256  # attention: the band of the banded rows

    # data
    dataset: str = ""  # train: empty for random tokens, else data_root/dataset/train.bin, read as train.py reads it
    data_root: str = "data"  # where the dataset folders are

    # system
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 elsewhere) | ...
    seed: int = 1337  # the model's initial weights and the random data
    json: str = ""  # also write the rows to this path as JSON
    profile: str = ""  # train: a folder; each row's timed steps run under torch.profiler, which writes a Chrome
    # trace per row there (open it in chrome://tracing or Perfetto) and prints the operations that took longest


def parse_ints(name: str, text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"{name} must be a comma list of integers, e.g. 1,8; got '{text}'") from None
    if not values or min(values) < 1:
        raise UserError(f"{name} needs at least one value, each at least 1; got '{text}'")
    return values


class RandomBatch:
    """One fixed batch of random tokens, whatever the index: no host work in the timed steps."""

    def __init__(self, vocab_size: int, batch_size: int, block_size: int, device: torch.device) -> None:
        data = torch.randint(vocab_size, (batch_size, block_size + 1), device=device)  # (B, T+1)
        self.batch = (data[:, :-1].contiguous(), data[:, 1:].contiguous())

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch


@contextlib.contextmanager
def profiled(folder: str, name: str, device: torch.device) -> Any:
    """Run the body under torch.profiler (folder given): a Chrome trace folder/NAME.json, and the operations that
    took the most time on the device (the CPU's time on a CPU) printed as torch.profiler's table. The timing it
    brackets includes the profiler's own overhead."""
    if not folder:
        yield
        return
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as profiler:
        yield
    os.makedirs(folder, exist_ok=True)
    profiler.export_chrome_trace(os.path.join(folder, f"{name}.json"))
    print(f"profile of {name} (trace: {os.path.join(folder, name + '.json')}):")
    print(profiler.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                        row_limit=30, max_name_column_width=70))


def bench_row(cfg: BenchConfig, model_cfg: GPTConfig, meta: dict[str, Any] | None, layout: Layout,
              dtype: torch.dtype, compiled: bool, batch_size: int) -> dict[str, Any]:
    """Fresh model, optimizer and scaler; warm up, then time cfg.iters training steps. Returns the metrics."""
    device = layout.device
    with torch.device(device) if layout.sharded else contextlib.nullcontext():  # a model to shard: on its device
        model = GPT(model_cfg)
    # train.py's default rates: the values do not change the time of a step
    parts = Parts.assemble(model, layout, dtype, lambda m: optim.build(m, cfg.optimizer, 6e-4, 0.1, (0.9, 0.95),
                                                                       device.type),
                           cfg.fsdp, cfg.activation_checkpointing, compiled, cfg.fp8)
    T = model_cfg.block_size
    plan = BatchPlan(batch_size, cfg.gradient_accumulation_steps, T, layout.dp_world, layout.dp_rank, batch_size)
    if meta is None:
        data = RandomBatch(model_cfg.vocab_size, batch_size, T, device)
    else:  # train.bin's batches in turn, as training reads them
        path = os.path.join(cfg.data_root, cfg.dataset, "train.bin")
        data = Batches(path, meta["dtype"], T, batch_size, model_cfg.vocab_size, cfg.seed)
    index = 0
    batch = data.get(index, device)

    t0 = time.perf_counter()
    eval_model, step = parts.stepper(data, batch, plan.micro_steps, stride=1, grad_clip=cfg.grad_clip)
    for _ in range(cfg.warmup):
        loss, _, batch = step(index, batch)
        index += plan.micro_steps
    synchronize(device)
    t1 = time.perf_counter()
    row_name = f"{'compiled' if compiled else 'eager'}_batch{batch_size}"
    with profiled(cfg.profile if layout.master else "", row_name, device):  # one trace, rank 0's
        for _ in range(cfg.iters):
            loss, _, batch = step(index, batch)
            index += plan.micro_steps
        final_loss = loss.item()  # waits for the device too
        synchronize(device)
        dt = (time.perf_counter() - t1) / cfg.iters  # seconds per iteration
    tokens = plan.tokens_per_iter  # over every process
    failed = compiled and (eval_model is model if not parts.regions else parts.regions[0]._compiled_call_impl is None)
    return {"status": "compile failed: eager" if failed else "ok",
            "ms_per_iter": dt * 1000, "tokens_per_s": tokens / dt,
            "mfu": model.estimate_mfu(tokens // layout.world, dt, runtime.peak_flops(device)),
            "warmup_s": t1 - t0, "loss": final_loss}


def sample_row(cfg: BenchConfig, model_cfg: GPTConfig, device: torch.device, dtype: torch.dtype, compiled: bool,
               graphed: bool, kv_cache: bool, batch_size: int, new_tokens: int) -> dict[str, Any]:
    """Fresh model in the working dtype; an untimed warm-up generation, then one timed one. Returns the metrics."""
    model = GPT(model_cfg).to(device=device, dtype=dtype).eval()  # decoding reads every weight per token
    prompt = torch.randint(model_cfg.vocab_size, (batch_size, cfg.prompt_tokens), device=device)  # (B, T)
    unmodified = Sampling(temperature=1.0)  # the model's own distribution
    t0 = time.perf_counter()
    how = {"use_cache": kv_cache, "compiled": compiled, "cuda_graph": graphed}
    list(generate_tokens(model, prompt, new_tokens, unmodified, **how))  # compiles (or captures) and records every
    # span the timed run uses
    synchronize(device)
    t1 = time.perf_counter()
    tokens = generate_tokens(model, prompt, new_tokens, unmodified, **how)
    next(tokens)  # prefill and the first sampled token
    synchronize(device)
    t2 = time.perf_counter()
    for _ in tokens:
        pass
    synchronize(device)
    dt = time.perf_counter() - t1  # seconds for all new tokens
    return {"status": "ok", "tokens_per_s": batch_size * new_tokens / dt, "tokens_per_s_per_row": new_tokens / dt,
            "ms_per_token": dt * 1000 / new_tokens, "first_token_ms": (t2 - t1) * 1000, "warmup_s": t1 - t0}


def attention_row(cfg: BenchConfig, model_cfg: GPTConfig, device: torch.device, dtype: torch.dtype, T: int,
                  banded: bool, batch_size: int) -> dict[str, Any]:
    """One attention layer (dense, or banded with window cfg.band) on (batch_size, T) random activations."""
    layer = CausalSelfAttention(replace(model_cfg, block_size=T), cfg.band if banded else None).to(device, dtype)
    x = torch.randn(batch_size, T, model_cfg.n_embd, device=device, dtype=dtype, requires_grad=True)
    times = {}
    for name, step in (("forward_ms", lambda: layer(x)), ("step_ms", lambda: layer(x).sum().backward())):
        for _ in range(cfg.warmup):
            step()
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(cfg.iters):
            step()
        synchronize(device)
        times[name] = (time.perf_counter() - t0) * 1000 / cfg.iters
    diff = None
    if banded:  # the kernel against dense attention with the causal band mask, on the same q, k, v
        with torch.no_grad():
            q, k, v = torch.randn(3, batch_size, model_cfg.n_head, T, model_cfg.head_dim, device=device,
                                  dtype=dtype)
            mask_ref = banded_attention(q, k, v, cfg.band, flex=False)
            diff = (banded_attention(q, k, v, cfg.band, flex=device.type == "cuda") - mask_ref).abs().max().item()
    return {"status": "ok", **times, "max_diff": diff}


def cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], cfg: BenchConfig, model_cfg: GPTConfig, n_params: int) -> str:
    """Markdown: a line naming hardware, dtype, model and workload, the command, then one table row per run."""
    r = rows[0]
    columns = COLUMNS[cfg.mode]
    keys = [key for key in KEYS if key in r]
    work = {"train": f"{r['data']} data, gradient accumulation {cfg.gradient_accumulation_steps}, {cfg.warmup} "
                     f"warm-up + {cfg.iters} timed steps",
            "sample": f"random {cfg.prompt_tokens}-token prompts, temperature 1, no top-k; one untimed generation, "
                      "then the same one timed",
            "attention": f"one attention layer, banded rows with window {cfg.band}; {cfg.warmup} warm-up + "
                         f"{cfg.iters} timed calls"}[cfg.mode]
    m = model_cfg
    lines = [f"{r['device']}, torch {r['torch']}, {r['dtype']}; GPT {m.n_layer} layers, {m.n_head} heads, "
             f"{m.n_embd} wide, block {m.block_size}, vocab {m.vocab_size}, bias {m.bias}, "
             f"{n_params / 1e6:.1f}M params in the FLOPs' 6N (the head's matmul included); {work}", "",
             f"`{r['command']}`", "",
             "| " + " | ".join([KEYS[k] for k in keys] + [head for head, _ in columns.values()]) + " |",
             "|---|" + "---:|" * (len(keys) + len(columns) - 1)]
    for row in rows:
        first = str(row[keys[0]]) if row["status"] == "ok" else f"{row[keys[0]]} ({row['status']})"
        cells = [first, *(str(row[k]) for k in keys[1:]), *(cell(row[k], spec) for k, (_, spec) in columns.items())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CHOICES = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}


def check(cfg: BenchConfig) -> None:
    if cfg.mode not in COLUMNS:
        raise UserError(f"mode must be train, sample or attention, got '{cfg.mode}'")
    for name in ("compile", "cuda_graph", "kv_cache"):
        if getattr(cfg, name) not in CHOICES:
            raise UserError(f"{name} must be on, off or both, got '{getattr(cfg, name)}'")
    for name, low in (("gradient_accumulation_steps", 1), ("iters", 1), ("warmup", 0), ("prompt_tokens", 1),
                      ("band", 1), ("tensor_parallel", 1), ("vocab_multiple", 1)):
        if getattr(cfg, name) < low:
            raise UserError(f"{name} must be at least {low}, got {getattr(cfg, name)}")
    if cfg.mode == "sample" and cfg.dataset:
        raise UserError("mode=sample times random prompts: drop --dataset")
    if cfg.optimizer not in ("adamw", "muon"):
        raise UserError(f"optimizer must be adamw or muon, got '{cfg.optimizer}'")
    if cfg.vocab_size is not None and cfg.vocab_size < 1:
        raise UserError(f"vocab_size must be at least 1 (or None), got {cfg.vocab_size}")


def bench_model(cfg: BenchConfig, meta: dict[str, Any] | None) -> GPTConfig:
    """The model, as train.py resolves it (model.ModelSettings). Its vocabulary: --vocab_size as given, else the
    dataset's (as train.py trains on it), else the preset's; to train, the latter two padded to vocab_multiple as
    train.py pads them (GPT-2's 50257 -> 50304). Sampling decodes with the vocabulary unpadded, as sample.py."""
    try:
        model_cfg = cfg.resolve()
        if cfg.vocab_size:
            return replace(model_cfg, vocab_size=cfg.vocab_size)
        vocab = meta["vocab_size"] if meta else model_cfg.vocab_size
        if cfg.mode == "train":
            return cfg.resolve(vocab)
    except ValueError as e:
        raise UserError(str(e)) from None
    return replace(model_cfg, vocab_size=vocab)


def plan(cfg: BenchConfig, device: torch.device) -> list[dict[str, Any]]:
    """The rows to run: their settings, one dict each."""
    sizes = parse_ints("batch_size", cfg.batch_size)
    if cfg.mode == "train":
        return [{"compile": c, "batch_size": b} for c in CHOICES[cfg.compile] for b in sizes]
    if cfg.mode == "attention":
        seq_lens = parse_ints("seq_lens", cfg.seq_lens)
        return [{"seq_len": t, "attention": a, "batch_size": b} for b in sizes for t in seq_lens
                for a in ("dense", "banded")]
    new = parse_ints("new_tokens", cfg.new_tokens)
    decoders = []  # (compile, cuda_graph): a graph holds the eager step; compiled, inductor makes its own graphs
    for c in CHOICES[cfg.compile]:
        graphs = CHOICES[cfg.cuda_graph] if c == "off" and device.type == "cuda" else ["off"]
        decoders += [(c, g) for g in graphs]
    rows = []
    for kv in CHOICES[cfg.kv_cache][::-1]:  # without the cache the window is recomputed every token: eager, once
        for c, g in decoders if kv == "on" else [("off", "off")]:
            rows += [{"compile": c, "cuda_graph": g, "kv_cache": kv, "batch_size": b, "new_tokens": n}
                     for b in sizes for n in new]
    return rows


def run_row(cfg: BenchConfig, model_cfg: GPTConfig, meta: dict[str, Any] | None, layout: Layout,
            dtype: torch.dtype, run: dict[str, Any]) -> dict[str, Any]:
    """One row's metrics, from a clean start: no earlier row's graphs, seed reset, peak memory reset. A row that
    runs out of memory is recorded as OOM and the benchmark goes on: the next (smaller or eager) row may fit."""
    device = layout.device
    torch.compiler.reset()  # fresh compile, no recompile limit reached
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row: dict[str, Any] = dict.fromkeys(["status", *COLUMNS[cfg.mode]])
    try:
        if cfg.mode == "train":
            row |= bench_row(cfg, model_cfg, meta, layout, dtype, run["compile"] == "on", run["batch_size"])
        elif cfg.mode == "attention":
            row |= attention_row(cfg, model_cfg, device, dtype, run["seq_len"], run["attention"] == "banded",
                                 run["batch_size"])
        else:
            row |= sample_row(cfg, model_cfg, device, dtype, run["compile"] == "on", run["cuda_graph"] == "on",
                              run["kv_cache"] == "on", run["batch_size"], run["new_tokens"])
        if device.type == "cuda":  # the peak since the reset: this row's model, optimizer and activations
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError:
        row["status"] = "OOM"
    gc.collect()  # the failed row's tensors, held by the traceback until now
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str]) -> list[dict[str, Any]]:
    cfg = configurator.load(BenchConfig, argv)
    if not cfg.compile:
        cfg = replace(cfg, compile="both" if cfg.mode == "train" else "off")
    check(cfg)
    if cfg.json:  # fail now, not after the whole benchmark
        check_writable(cfg.json)
    layout = setup(cfg)
    device = layout.device
    runs = plan(cfg, device)
    dtype = runtime.resolve_dtype(cfg.dtype, device)
    parallel.refuse_together(layout, parallel.check_run, layout, dtype, cfg.fsdp, cfg.tensor_parallel, cfg.fp8)
    meta = read_meta(os.path.join(cfg.data_root, cfg.dataset)) if cfg.dataset else None
    model_cfg = bench_model(cfg, meta)
    if layout.tp > 1:
        parallel.refuse_together(layout, parallel.check_sizes, model_cfg, layout.tp)
    runtime.enable_tf32(device)
    with torch.device("meta"):  # shape only, no memory
        n_params = GPT(model_cfg).get_num_params()
    common = {"mode": cfg.mode, "device": runtime.device_name(device), "torch": torch.__version__,
              "dtype": str(dtype).removeprefix("torch."), "n_params": n_params,
              "command": shlex.join([*launcher(layout), "bench.py", *argv]), "data": cfg.dataset or "synthetic",
              **asdict(model_cfg), **({"accum": cfg.gradient_accumulation_steps} if cfg.mode == "train"
                                      else {"prompt_tokens": cfg.prompt_tokens})}
    if layout.distributed:
        common["layout"] = layout.describe(cfg.fsdp)
    rows = []
    for run in runs:
        rows.append(common | run | run_row(cfg, model_cfg, meta, layout, dtype, run))
        if layout.master:
            print(" ".join(f"{k}={v}" for k, v in run.items()) + f": {rows[-1]['status']}", flush=True)
    if layout.master:
        print("\n" + table(rows, cfg, model_cfg, n_params))
    if cfg.json and layout.master:
        with open(cfg.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {len(rows)} rows to {cfg.json}")
    process.close_group()
    return rows


def check_writable(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise UserError(f"json={path}: cannot write into {directory}")


def setup(cfg: BenchConfig) -> Layout:
    """This process, as train.py sets it up: one, or one of torchrun's, with its share of the layout."""
    if cfg.mode != "train" and "RANK" in os.environ:
        raise UserError(f"mode={cfg.mode} runs in one process: start it with python, not torchrun")
    return parallel.setup(cfg.device, cfg.backend, cfg.tensor_parallel, cfg.fsdp, cfg.gradient_accumulation_steps)


def launcher(layout: Layout) -> list[str]:
    return ["torchrun", "--standalone", f"--nproc_per_node={layout.world}"] if layout.distributed else ["python"]


if __name__ == "__main__":
    process.run(main)
