"""Train a GPT on one device or several under torchrun (DDP; FSDP and tensor parallelism: parallel.py).

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
    python train.py config/train_shakespeare_char.py config/arch/llama.py --out_dir=out-llama  # another block
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    torchrun --standalone --nproc_per_node=2 train.py config/train_gpt2_xl.py  # FSDP: a model too big for one GPU
    python train.py config/train_gpt2.py --dry_run=True  # the model's accounting and the batch arithmetic only

Data are data/<dataset>/{train,val}.bin with their meta.json (see data/*/prepare.py). Checkpoints go to
out_dir/ckpt.pt (the latest) and out_dir/best.pt (the best validation loss); init_from=resume continues exactly
where ckpt.pt stopped (same losses as an unbroken run).

Read top to bottom: the settings and the schedule; checks; the model (from scratch, a checkpoint or GPT-2); the
run's parts; the loop (`train`); `main`. The machinery lives in modules named for their idea: dataloader.py (the
batches), step.py (one optimizer step, its CUDA graph, the watchdog), evaluate.py (the loss, bits per byte,
HellaSwag), generate.py (the samples), checkpoint.py, parallel.py, process.py (the stop request, the exit statuses).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist

import accounting
import checkpoint
import configurator
import hf
import microbatch
import optim
import parallel
import process
import runtime
from configurator import UserError
from dataloader import Batches, EvalBatches
from evaluate import HellaSwagExample, bytes_per_token, estimate_loss, hellaswag, hellaswag_for_run
from generate import sample_prompts, training_samples
from metrics import MetricsLog
from model import GPT, PRESETS, GPTConfig, ModelSettings, resolve_config
from parallel import Layout
from process import StdoutOrStderr, StopRequest
from step import GraphedStep, Step, Watchdog, graph_blocker, set_capturable, set_lr
from tokenizer import GPT2_META, Tokenizer, read_meta

CPU_WARNING_FLOPS = 1e12  # training FLOPs per iteration above which a CPU run is warned that it is a GPU recipe
CPU_FLOPS = 1e11  # a typical CPU's FLOP/s in float32 training, for that warning's estimate
QUIET_S = 10.0  # a log line at least this often, whatever log_interval says: a slow machine must not look hung


@dataclass
class TrainConfig(ModelSettings):
    """Train a GPT. The model settings (preset, n_layer, ...: model.ModelSettings) come first; by default GPT-2 124M
    without biases, on OpenWebText, with nanoGPT's AdamW, warmup and cosine schedule (config/train_gpt2.py sets
    the batch for 8 GPUs)."""

    # I/O
    out_dir: str = "out"  # where ckpt.pt is written (and read by init_from=resume)
    eval_interval: int = 2000  # evaluate, and maybe checkpoint, every this many iterations
    log_interval: int = 1  # print loss, timing and MFU every this many iterations (and at least every QUIET_S)
    eval_iters: int = 200  # batches per split in each evaluation, at most: fewer where the split holds fewer batches
    eval_only: bool = False  # evaluate once and exit
    eval_at_start: bool = False  # evaluate before the first step from scratch too (it delays the first step)
    sample_interval: int = 0  # every this many evaluations, continue fixed prompts greedily and sampled; 0: never
    sample_prompts: str = ""  # the prompts, separated by '|'; empty: a new document (BPE) or a new line (chars)
    sample_tokens: int = 64  # tokens generated per prompt and way
    hellaswag_interval: int = 0  # every this many evaluations, zero-shot HellaSwag accuracy too (GPT-2 BPE data)
    hellaswag: str = ""  # its val jsonl; empty: data/hellaswag/hellaswag_val.jsonl, downloaded once
    always_save_checkpoint: bool = True  # ckpt.pt at every evaluation, else only when val loss improves (best.pt)
    overwrite: bool = False  # a run from scratch (or GPT-2) where out_dir holds checkpoints replaces them; else
    # it is refused
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
    batch_size: int = 12  # sequences per micro-batch and process (a step takes batch_size x
    # gradient_accumulation_steps sequences in all, however micro_batch splits them)
    micro_batch: int | str = ""  # the sequences each process runs at once: empty: batch_size; a number that divides
    # its share of a step; auto: the largest that fits the GPU, found by probe steps (the tokens per step stay)

    # memory and several GPUs
    activation_checkpointing: bool = False  # recompute each block in the backward pass: less memory, more time
    fsdp: bool = False  # under torchrun: shard the weights, gradients and AdamW state over the processes (FSDP2),
    # for models whose 16 bytes per parameter do not fit one GPU; checkpoints are then sharded too (ckpt.dcp)
    tensor_parallel: int = 1  # under torchrun: split each block's matrices over this many processes (Megatron);
    # fewer than all of them needs fsdp=True (e.g. 4 processes = FSDP 2 x TP 2)
    dry_run: bool = False  # print the model, batch arithmetic and memory estimate, check the data (and wandb) the
    # run needs, then exit

    # the optimizer: AdamW, or Muon for the blocks' matrices with AdamW for the rest (optim.py)
    optimizer: str = "adamw"  # adamw | muon
    learning_rate: float = 6e-4  # peak learning rate, after warmup (with muon: of the AdamW part)
    max_iters: int = 600000  # optimizer steps in all
    weight_decay: float = 1e-1  # AdamW weight decay, on matrices and embeddings only
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    muon_lr: float = 0.02  # muon: the peak learning rate of the blocks' matrices (the schedule scales it alike)
    muon_momentum: float = 0.95  # muon: the momentum of the blocks' matrices
    grad_clip: float = 1.0  # 0 disables clipping
    max_skipped_steps: int = 10  # updates skipped in a row (NaN/inf loss or gradients) that stop the run; 0: never

    # learning-rate schedule: linear warmup, then cosine decay to min_lr, or (wsd) a stable rate and a linear decay
    decay_lr: bool = True  # False: a constant learning_rate
    lr_schedule: str = "cosine"  # cosine | wsd (warmup, stable, decay: Hu et al. 2024)
    warmup_iters: int = 2000  # linear warmup over this many iterations
    lr_decay_iters: int | None = None  # the decay to min_lr ends here; None: at max_iters (a resumed run with
    # another max_iters then decays to its own)
    decay_fraction: float = 0.4  # wsd: the share of lr_decay_iters spent decaying linearly, at its end
    min_lr: float = 6e-5  # the learning rate after decay (usually learning_rate / 10)
    target_val_loss: float | None = None  # stop at the first evaluation at or below this val loss, save, and say
    # how many steps, tokens, seconds and GPU-hours it took

    # system
    backend: str = "auto"  # under torchrun: auto (nccl on GPUs, gloo on CPUs) | nccl | gloo
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 elsewhere) | ...
    compile: bool = True  # torch.compile the model; falls back to eager with a warning if it fails
    cuda_graph: bool = False  # replay each step as one CUDA graph, one launch instead of hundreds (one GPU,
    # bf16/fp32; elsewhere the step runs without it, with a note on a GPU)
    fp8: bool = False  # FP8 matrix multiplies (torchao's float8 training; H100-class GPUs): less memory, faster
    # only for wide models, other numerics, so opt-in; needs pip install torchao

    def __post_init__(self) -> None:
        if self.lr_decay_iters is None:  # the schedule ends with the run
            self.lr_decay_iters = self.max_iters


def wsd_decay_start(cfg: TrainConfig) -> int:
    """The iteration where a warmup-stable-decay schedule leaves its stable rate."""
    return max(cfg.warmup_iters, cfg.lr_decay_iters - round(cfg.decay_fraction * cfg.lr_decay_iters))


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup over warmup_iters; then either a cosine decay to min_lr at lr_decay_iters, or (wsd) the peak
    rate until the last decay_fraction of lr_decay_iters and a linear decay to min_lr over it; then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = wsd_decay_start(cfg)
        if it < decay_start:
            return cfg.learning_rate
        progress = (it - decay_start) / max(1, cfg.lr_decay_iters - decay_start)
        return cfg.learning_rate + progress * (cfg.min_lr - cfg.learning_rate)
    progress = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


# A resume takes the settings of the checkpoint's run, unless given, but for those that an invocation says for
# itself (a target the run reached would stop it again at once); those of this machine (a sharded run may be
# resumed in one process, a GPU's micro-batch or dtype may not suit another); and the model's shape, which the
# checkpoint's weights fix (check_resume refuses another) and a preset given must not find overridden. dropout,
# which is not in the weights, is the run's.
NOT_RESUMED = ("init_from", "out_dir", "overwrite", "eval_only", "dry_run", "target_val_loss", "device", "dtype",
               "backend", "fsdp", "tensor_parallel", "micro_batch", "cuda_graph", "fp8",
               *(name for name in ModelSettings.__dataclass_fields__ if name != "dropout"))
# settings whose change on a resume makes another run of it (beside the dataset and the sequences per step)
SCHEDULE = ("learning_rate", "min_lr", "muon_lr", "decay_lr", "lr_schedule", "warmup_iters",
            "lr_decay_iters", "decay_fraction", "max_iters")


def load_settings(argv: list[str]) -> tuple[TrainConfig, str | None]:
    """The settings config files and flags give; with init_from=resume, laid over those of the run the checkpoint
    holds (its dataset, batch, accumulation, schedule, evaluation, ...: all but NOT_RESUMED), so that a resume
    continues that run. The second value is a note naming what the settings given change of that run, if
    anything."""
    given = configurator.settings_from_args(TrainConfig, argv)
    if given.get("init_from") != "resume":
        return TrainConfig(**given), None
    out_dir = given.get("out_dir", TrainConfig.out_dir)
    fields = TrainConfig.__dataclass_fields__
    kept = {k: v for k, v in checkpoint.run_settings(out_dir).items() if k in fields and k not in NOT_RESUMED}
    # checked as a config file's values are: a foreign checkpoint's (nanoGPT's) might not fit our types
    saved = configurator.settings_from_dict(TrainConfig, kept, f"the checkpoint in {out_dir}")
    recorded = set(saved)
    if "lr_decay_iters" not in given and "lr_decay_iters" in saved and \
            saved["lr_decay_iters"] == saved.get("max_iters"):
        del saved["lr_decay_iters"]  # a schedule that ended with the run ends with the resumed run's max_iters
    cfg = TrainConfig(**saved | given)
    return cfg, resume_changes(TrainConfig(**saved), recorded, cfg, set(given), out_dir)


def resume_changes(saved: TrainConfig, recorded: set[str], cfg: TrainConfig, given: set[str],
                   out_dir: str) -> str | None:
    """'note: ...' naming each setting given that changes what the checkpoint's run means: its data, its sequences
    per step, its schedule (the decay's end too, where it follows max_iters); None when none does."""
    changes = [f"dataset {saved.dataset} -> {cfg.dataset}"] if "dataset" in given & recorded and \
        saved.dataset != cfg.dataset else []
    before, after = (c.batch_size * c.gradient_accumulation_steps for c in (saved, cfg))
    if {"batch_size", "gradient_accumulation_steps"} <= set(recorded) and before != after:
        changes.append(f"sequences per step {before:,} -> {after:,} (batch_size x gradient_accumulation_steps)")
    changes += [f"{k} {getattr(saved, k)} -> {getattr(cfg, k)}" for k in SCHEDULE
                if k in recorded and getattr(saved, k) != getattr(cfg, k)]
    if not changes:
        return None
    return f"note: this resume changes the run in {out_dir}: {'; '.join(changes)}"


# ----------------------------------------------------------------------------------------------------------------
# checks made before any training time is spent


def check_settings(cfg: TrainConfig) -> None:
    if cfg.init_from not in ("scratch", "resume", *hf.GPT2_NAMES):
        raise UserError(f"init_from must be scratch, resume or one of {hf.GPT2_NAMES}, got '{cfg.init_from}'")
    for name in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_iters", "eval_interval",
                 "log_interval", "vocab_multiple", "tensor_parallel", "sample_tokens"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must be at least 0, got {getattr(cfg, name)}")
    for name in ("max_skipped_steps", "sample_interval", "hellaswag_interval"):  # 0: never
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must be at least 0 (0: never), got {getattr(cfg, name)}")
    if not 0 <= cfg.seed < 2**63:
        raise UserError(f"seed must be in [0, 2**63), got {cfg.seed}")
    if cfg.max_iters < 1 and not cfg.eval_only:
        raise UserError("max_iters must be at least 1 (to evaluate a checkpoint without training: eval_only=True)")
    check_rates(cfg)


def check_rates(cfg: TrainConfig) -> None:
    """The optimizer's settings and the schedule's."""
    for name in ("beta1", "beta2", "muon_momentum"):
        if not 0 <= getattr(cfg, name) < 1:
            raise UserError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    for name, allowed in (("optimizer", ("adamw", "muon")), ("lr_schedule", ("cosine", "wsd"))):
        if getattr(cfg, name) not in allowed:
            raise UserError(f"{name} must be {' or '.join(allowed)}, got '{getattr(cfg, name)}'")
    if not 0 <= cfg.decay_fraction <= 1 or cfg.muon_lr < 0:
        raise UserError(f"decay_fraction must be in [0, 1] and muon_lr at least 0, got {cfg.decay_fraction} and "
                        f"{cfg.muon_lr}")
    for name in ("learning_rate", "min_lr", "muon_lr"):  # a rate above 1 moves a weight by more than 1 a step
        if getattr(cfg, name) > 1:
            raise UserError(f"{name} must be at most 1, got {getattr(cfg, name)}")
    if cfg.decay_lr and cfg.min_lr > cfg.learning_rate:
        raise UserError(f"min_lr ({cfg.min_lr}) is above learning_rate ({cfg.learning_rate}): the schedule would "
                        "rise after warmup")


def check_out_dir(out_dir: str) -> None:
    """Make out_dir, and fail now rather than at the first checkpoint, after the training time is spent, if a
    checkpoint could not be written there."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"out_dir {out_dir} cannot hold checkpoints: {e.strerror or e}") from None


def claim_out_dir_and_check_wandb(cfg: TrainConfig, held: contextlib.ExitStack) -> None:
    """What only rank 0 will need: an out_dir that can hold checkpoints, held for this run alone (checkpoint.claim,
    released by `held`), whose checkpoints a new run does not replace unless told to; and wandb when it logs."""
    if cfg.wandb_log:
        configurator.require("wandb", "wandb_log=True")
    if not cfg.eval_only:
        check_out_dir(cfg.out_dir)
        held.enter_context(checkpoint.claim(cfg.out_dir))
        found = checkpoint.present(cfg.out_dir)
        if found and cfg.init_from != "resume" and not cfg.overwrite:
            raise UserError(f"out_dir {cfg.out_dir} already holds checkpoints ({', '.join(found)}): continue them "
                            "with --init_from=resume, choose another out_dir, or replace them with --overwrite=True")


def warn_if_gpu_recipe_on_cpu(model: GPT, device: torch.device, tokens: int) -> None:
    """A config made for GPUs (config/train_gpt2.py) on a CPU: say so before minutes of compiling and hours per
    evaluation, rather than leaving the user to wonder."""
    flops = model.flops_per_token() * tokens  # per iteration
    if device.type == "cpu" and flops > CPU_WARNING_FLOPS:
        print(f"warning: {flops / 1e12:,.1f} TFLOP per iteration on the CPU: this is a GPU recipe; at the 0.1 "
              f"TFLOP/s of a typical CPU an iteration takes about {duration(flops / CPU_FLOPS)} (the first log line "
              "says how long max_iters would take)", flush=True)


def schedule_note(cfg: TrainConfig) -> str | None:
    """A note when the run stops before its learning-rate schedule ends (a config's lr_decay_iters kept while
    --max_iters was shortened): the decay, which is where a warmup-stable-decay run gains most, is then cut off
    or never starts."""
    if not cfg.decay_lr or cfg.lr_decay_iters <= cfg.max_iters:
        return None
    ends = (f"the learning rate decays until lr_decay_iters={cfg.lr_decay_iters}, after the run's "
            f"max_iters={cfg.max_iters}")
    if cfg.lr_schedule == "wsd":
        ends += f" (its decay starts at {wsd_decay_start(cfg)})"
    return f"note: {ends}; set lr_decay_iters={cfg.max_iters} for a schedule that ends with the run"


# ----------------------------------------------------------------------------------------------------------------
# the model: from scratch, from the checkpoint in out_dir, or OpenAI's GPT-2


def data_meta(cfg: TrainConfig, required: bool = True) -> dict[str, Any]:
    """The dataset's meta.json; without one (and not required: a dry run), GPT-2's, or the preset's vocabulary."""
    try:
        return read_meta(os.path.join(cfg.data_root, cfg.dataset))
    except UserError:
        if required:
            raise
        return GPT2_META | {"vocab_size": PRESETS.get(cfg.preset, {}).get("vocab_size", GPT2_META["vocab_size"])}


def model_config(cfg: TrainConfig, meta: dict[str, Any]) -> GPTConfig:
    """The preset with every model setting given over it, and the data's vocabulary padded to vocab_multiple."""
    try:
        return cfg.resolve(meta["vocab_size"])
    except ValueError as e:
        raise UserError(str(e)) from None


def check_resume(cfg: TrainConfig, header: checkpoint.Header) -> None:
    """Refuse settings that would build another model than the checkpoint's (ModelSettings.conflicts), or another
    optimizer than the one whose state it holds."""
    trained_with = header.config.get("optimizer", "adamw")  # checkpoints from before Muon: AdamW's
    if trained_with != cfg.optimizer:
        raise UserError(f"the checkpoint in {cfg.out_dir} holds {trained_with}'s state, the settings ask for "
                        f"optimizer={cfg.optimizer}: resume with optimizer={trained_with}")
    try:
        conflicts = cfg.conflicts(header.model_args)
    except ValueError as e:
        raise UserError(str(e)) from None
    if conflicts:
        k, have, want = conflicts[0]
        source = f" (from preset '{cfg.preset}')" if cfg.preset and getattr(cfg, k, None) is None else ""
        raise UserError(f"the checkpoint in {cfg.out_dir} has {k}={have!r}, the settings ask for {k}={want!r}"
                        f"{source}: resume with the checkpoint's settings, or train from scratch elsewhere")


def build_model(cfg: TrainConfig, meta: dict[str, Any], device: torch.device, dtype: torch.dtype,
                sharded: bool = False) -> tuple[GPT, checkpoint.Checkpoint | None]:
    """The model, and the checkpoint when resuming (settings given must match it). A dry run builds it on the meta
    device: shapes only, no memory. A model to be sharded is built on its device (a CPU takes minutes to draw
    billions of weights), and when resuming its weights are left to checkpoint.restore_run, which reads each
    process's shards only."""
    data_dir = os.path.join(cfg.data_root, cfg.dataset)
    if cfg.init_from == "scratch":
        config = model_config(cfg, meta)
        if not (cfg.dry_run or sharded):
            check_memory(cfg, config, device, dtype)
        with torch.device("meta" if cfg.dry_run else device) if cfg.dry_run or sharded else contextlib.nullcontext():
            return GPT(config), None
    if cfg.init_from == "resume":  # mapped when sharded: restore_run reads the weights it needs
        ckpt = checkpoint.read(cfg.out_dir, map_location="cpu" if sharded else device, mmap=sharded,
                               optimizer=True, shards_later=sharded)
        trained_on = ckpt.header.tokenizer_kind(ckpt.path)
        if trained_on != meta["tokenizer"]:
            raise UserError(f"the checkpoint was trained on {trained_on} tokens, {data_dir} has "
                            f"{meta['tokenizer']} tokens")
        if trained_on == "char" and ckpt.header.meta.get("chars") != meta.get("chars"):  # ids mean other chars
            raise UserError(f"the checkpoint was trained on {len(ckpt.header.meta.get('chars') or '')} characters, "
                            f"{data_dir} has another vocabulary ({len(meta.get('chars') or '')} characters): resume "
                            "on the data it was trained on")
        check_resume(cfg, ckpt.header)
        if sharded:
            with torch.device(device):
                return GPT(ckpt.header.model_config(dropout=cfg.dropout)), ckpt
        check_memory(cfg, ckpt.header.model_config(), device, dtype)
        return ckpt.build_model(dropout=cfg.dropout), ckpt
    if meta["tokenizer"] != "gpt2":
        raise UserError(f"{cfg.init_from} needs GPT-2 BPE data, {data_dir} has {meta['tokenizer']} tokens")
    if cfg.dry_run:  # the same shapes as OpenAI's weights, without downloading them
        with torch.device("meta"):
            model = GPT(resolve_config(cfg.init_from, dropout=cfg.dropout))
    else:
        model = hf.pretrained(cfg.init_from, cfg.dropout)
    if cfg.block_size is not None and cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    return model, None


def check_memory(cfg: TrainConfig, config: GPTConfig, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, before the model is built, a run that cannot fit the device: float32 weights, gradients and the
    optimizer's states (accounting.optimizer_state_elements) and one micro-batch's activations
    (accounting.activation_bytes)."""
    with torch.device("meta"):  # shapes only: counts the parameters of any size at once
        model = GPT(config)
    n_params = model.get_num_params(non_embedding=False)
    states = accounting.optimizer_state_elements(model, cfg.optimizer)
    micro = microbatch.parse(cfg.micro_batch, cfg.batch_size, None)
    if micro is None:  # auto: what must fit for the probe to run at all
        what, advice = "one sequence", "lower block_size, or set activation_checkpointing=True"
    else:
        what = f"batch_size {cfg.batch_size}" if micro == cfg.batch_size else f"micro_batch {micro}"
        advice = ("set micro_batch to fewer sequences (auto: the largest that fits; either way the tokens per step "
                  "stay) or lower block_size")
    activations = accounting.activation_bytes(config, micro or 1, dtype, cfg.activation_checkpointing)[0]
    runtime.check_fits(4 * (2 * n_params + states) + activations, device, f"training at {what} and block_size "
                       f"{config.block_size}", advice)


# ----------------------------------------------------------------------------------------------------------------
# the run: what the loop works with


@dataclass
class Progress:
    """How far training has come: all a checkpoint needs, with the weights and optimizer, to resume exactly."""

    iter_num: int = 0
    best_val_loss: float = float("inf")
    batch_pos: int = 0  # global index of the first training batch of the next iteration


@dataclass
class Run:
    """What the training loop works with. Three views of one set of weights: `model`, the plain module (what is
    saved); `eval_model`, the same compiled (what is evaluated); and inside `step`, that wrapped in DDP when
    distributed (what is trained). A sharded model is all three: sharded and compiled in place."""

    cfg: TrainConfig
    layout: Layout
    meta: dict[str, Any]
    model: GPT
    eval_model: torch.nn.Module
    step: Step  # one optimizer step: step(index, batch)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ctx: contextlib.AbstractContextManager
    train_data: Batches
    evals: dict[str, EvalBatches]  # the same batches at every evaluation
    progress: Progress
    micro: int  # sequences per micro-batch and process (micro_batch)
    history: dict[str, list] = field(default_factory=lambda: {"train_loss": [], "eval": []})  # for the tests
    launched: float = field(default_factory=time.perf_counter)  # when main started (a perf_counter reading)
    metrics: MetricsLog | None = None  # out_dir/metrics.jsonl, on rank 0 of a training run
    tokenizer: Tokenizer | None = None  # the data's, where it can be built here: bits per byte, samples
    byte_counts: torch.Tensor | None = None  # UTF-8 bytes per token id on the device, for bits per byte
    hellaswag: list[HellaSwagExample] = field(default_factory=list)  # with hellaswag_interval
    evaluation: dict[str, float] | None = None  # the latest evaluation's figures and iter, for the checkpoints

    def first_micro_batch(self) -> int:
        """The index of the micro-batch this process starts the next step with."""
        return first_micro_batch(self.cfg, self.progress.batch_pos, self.micro, self.layout.dp_rank)


def begin_record(run: Run, ckpt: checkpoint.Checkpoint | None, held: contextlib.ExitStack) -> None:
    """On rank 0: say where a resumed run starts, and open out_dir/metrics.jsonl (not to evaluate only) for the
    run's life; a resumed run evaluates again where it starts if that is due (train)."""
    cfg, start = run.cfg, run.progress.iter_num
    print("run: " + ", ".join(f"{k} {v}" for k, v in runtime.provenance(run.layout.device).items()))
    if ckpt is not None:
        print(f"resumed from {ckpt.path} at iter {ckpt.header.iter_num} (best val loss "
              f"{ckpt.header.best_val_loss:.4f}, the next batch {ckpt.header.batch_pos})")
    if cfg.sample_interval and run.layout.sharded:
        print("note: sample_interval: no samples during training with sharded weights (fsdp, tensor_parallel)")
    if not cfg.eval_only:
        log = MetricsLog(cfg.out_dir, start, reevaluates=start % cfg.eval_interval == 0)
        run.metrics = held.enter_context(contextlib.closing(log))


def share_of_step(cfg: TrainConfig, layout: Layout) -> int:
    """The sequences each data-parallel share takes a step: the recipe's batch_size x gradient_accumulation_steps,
    divided among the shares."""
    return cfg.batch_size * cfg.gradient_accumulation_steps // layout.dp_world


def check_micro_batch(cfg: TrainConfig, layout: Layout) -> None:
    """Refuse a micro_batch that does not divide each process's share of a step's sequences, or auto where the
    probe cannot run: with sharded weights."""
    if microbatch.parse(cfg.micro_batch, cfg.batch_size, share_of_step(cfg, layout)) is None and layout.sharded:
        raise UserError("micro_batch=auto: the probe needs whole weights on each process, not fsdp or "
                        "tensor_parallel: give micro_batch a number")


def micro_batch_size(cfg: TrainConfig, layout: Layout, model: GPT, optimizer: torch.optim.Optimizer,
                     ctx: contextlib.AbstractContextManager, vocab_size: int) -> int:
    """The micro-batch each process runs (micro_batch): batch_size, the number given, or with auto on a GPU the
    largest that fits, probed now on the placed model and agreed by every process (the smallest of theirs)."""
    share = share_of_step(cfg, layout)
    size = microbatch.parse(cfg.micro_batch, cfg.batch_size, share)
    if size is not None:
        return size
    device = layout.device
    if device.type != "cuda":
        if layout.master:
            print(f"micro_batch=auto: on {device.type} the micro-batch stays batch_size={cfg.batch_size} (the "
                  "probe measures a GPU's memory)")
        return cfg.batch_size
    buckets = 4 * sum(p.numel() for p in model.parameters()) if layout.distributed else 0  # DDP's, float32
    found, probes, budget = microbatch.find(model, optimizer, ctx, share, vocab_size, microbatch.CudaMemory(device),
                                            buckets)
    size = found or 0
    if layout.distributed:
        agreed = torch.tensor(size, device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        size = int(agreed.item())
    if not size:
        raise UserError(f"micro_batch=auto: not even one sequence of {model.config.block_size} tokens trains in "
                        f"{device}'s memory: try activation_checkpointing=True, a smaller block_size, or fsdp=True "
                        "over several GPUs" if layout.master else "", together=layout.distributed)
    if layout.master:
        print(f"micro_batch=auto: micro-batches of {size} ({share // size} micro-steps a step per process; "
              f"{tokens_per_iter(cfg, model):,} tokens a step, as the recipe says). Probed: "
              f"{', '.join(map(str, probes))} against {budget / 2**30:.1f} GiB", flush=True)
    return size


def first_micro_batch(cfg: TrainConfig, batch_pos: int, micro: int, dp_rank: int) -> int:
    """The index of the micro-batch (of `micro` sequences) that data-parallel share dp_rank starts a step with,
    batch_pos counting batches of batch_size, the recipe's (check_start: a whole number of micro-batches)."""
    return batch_pos * cfg.batch_size // micro + dp_rank


def check_start(cfg: TrainConfig, batch_pos: int, micro: int) -> None:
    """Refuse a resume whose data position is no whole number of micro-batches: a checkpoint from a run with
    another gradient_accumulation_steps, resumed in micro-batches that do not divide where it stopped."""
    if batch_pos * cfg.batch_size % micro:
        raise UserError(f"the checkpoint stopped after {batch_pos * cfg.batch_size:,} sequences of data, not a whole "
                        f"number of micro-batches of {micro}: resume with the gradient_accumulation_steps it was "
                        "trained with, or a micro_batch that divides that number")


def tokens_per_iter(cfg: TrainConfig, model: GPT) -> int:
    """Tokens per optimizer step, over every process."""
    return cfg.gradient_accumulation_steps * cfg.batch_size * model.config.block_size


def start_run(cfg: TrainConfig, layout: Layout, meta: dict[str, Any], model: GPT,
              ckpt: checkpoint.Checkpoint | None, dtype: torch.dtype) -> Run:
    """Optimizer, scaler and progress (restored when resuming), the batches, the compiled and DDP-wrapped (or
    sharded: parallel.parallelize) model."""
    device = layout.device
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"{os.path.join(cfg.data_root, cfg.dataset)} has {meta['vocab_size']} token ids, the model "
                        f"only {model.config.vocab_size}")
    regions = parallel.place(model, layout, dtype, cfg.fsdp, cfg.activation_checkpointing, cfg.compile, cfg.fp8)
    optimizer = optim.build(model, cfg.optimizer, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                            device.type, cfg.muon_lr, cfg.muon_momentum)
    ctx = runtime.autocast(device, dtype)
    micro = micro_batch_size(cfg, layout, model, optimizer, ctx, meta["vocab_size"])  # before any optimizer state
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    progress = Progress()
    if ckpt is not None:
        checkpoint.restore_run(ckpt, layout, model, optimizer, scaler)
        progress = Progress(ckpt.header.iter_num, ckpt.header.best_val_loss, ckpt.header.batch_pos)
    set_capturable(optimizer, device, cfg.cuda_graph)  # either way: a checkpoint may come from the other

    def path(split: str) -> str:
        return os.path.join(cfg.data_root, cfg.dataset, f"{split}.bin")

    T, vocab = model.config.block_size, meta["vocab_size"]  # ids in the padding rows mean nothing to the tokenizer
    train_data = Batches(path("train"), meta["dtype"], T, micro, vocab, cfg.seed, group=cfg.batch_size)
    evals = {split: EvalBatches(path(split), meta["dtype"], T, micro, vocab, cfg.eval_iters, group=cfg.batch_size)
             for split in ("train", "val")}
    parallel.refuse_together(layout, check_start, cfg, progress.batch_pos, micro)
    batch = train_data.get(first_micro_batch(cfg, progress.batch_pos, micro, layout.dp_rank), device)  # to compile
    eval_model, step_model = parallel.wrap(model, layout, regions, cfg.compile, batch, ctx)
    # data-parallel share r reads micro-batches first + r, + r + dp_world, ...: the global batch split across
    # the shares (the processes of a tensor-parallel group read the same batches)
    accum = share_of_step(cfg, layout) // micro
    step = (GraphedStep if cfg.cuda_graph else Step)(step_model, optimizer, scaler, ctx, train_data, accum,
                                                       stride=layout.dp_world, grad_clip=cfg.grad_clip)
    tok = data_tokenizer(cfg, meta)
    return Run(cfg, layout, meta, model, eval_model, step, optimizer, scaler, ctx, train_data, evals, progress, micro,
               evaluation=ckpt.header.evaluation if ckpt is not None else None, tokenizer=tok,
               hellaswag=hellaswag_for_run(cfg.hellaswag_interval, cfg.hellaswag, tok, layout.sharded),
               byte_counts=bytes_per_token(tok, model.config.vocab_size, device))


def data_tokenizer(cfg: TrainConfig, meta: dict[str, Any]) -> Tokenizer | None:
    """The data's tokenizer, for bits per byte and samples (their prompts checked now); None where it cannot be
    built here (an unknown kind, say): the run goes on with the loss alone, and refuses samples it cannot decode."""
    try:
        tok = Tokenizer(meta)
    except (ValueError, KeyError, UserError) as e:
        if cfg.sample_interval:
            raise UserError(f"sample_interval={cfg.sample_interval}: the data's tokenizer cannot be built ({e}); "
                            "set sample_interval=0") from None
        return None
    if cfg.sample_interval:
        sample_prompts(cfg.sample_prompts, tok)
    return tok


def show_samples(run: Run) -> None:
    """Rank 0, at an evaluation: the prompts continued greedily and sampled (generate.training_samples, from a
    random state of their own: training goes on exactly as it would without them), printed and logged."""
    cfg, it = run.cfg, run.progress.iter_num
    prompts = sample_prompts(cfg.sample_prompts, run.tokenizer)
    for prompt, texts in training_samples(run.model, run.tokenizer, prompts, run.layout.device, run.ctx,
                                          cfg.sample_tokens, cfg.seed):
        for way, text in texts.items():
            print(f"sample at iter {it}, {way}: {prompt!r} -> {text!r}")
        if run.metrics:
            run.metrics.write("sample", time.perf_counter() - run.launched, iter=it, prompt=prompt, **texts)


def save(run: Run, best: bool = False) -> str | None:
    """The run's state as a checkpoint (every process calls this); the path on rank 0."""
    p = run.progress
    header = checkpoint.Header(model_args=asdict(run.model.config), iter_num=p.iter_num, meta=run.meta,
                               config=asdict(run.cfg), best_val_loss=p.best_val_loss, batch_pos=p.batch_pos,
                               provenance=runtime.provenance(run.layout.device), evaluation=run.evaluation)
    return checkpoint.save_run(run.cfg.out_dir, run.layout, run.model, run.optimizer, run.scaler, header, best)


# ----------------------------------------------------------------------------------------------------------------
# what the loop does at its evaluations and log lines, and when asked to stop


def evaluate_and_save(run: Run, lr: float) -> bool:
    """Evaluate, log (rank 0), and save a checkpoint if val loss improved (or always_save_checkpoint, or the
    target is reached). Returns whether the val loss reached target_val_loss."""
    cfg, layout, progress = run.cfg, run.layout, run.progress
    losses = estimate_loss(run.eval_model, run.evals, layout.device, run.ctx, layout.dp_rank, layout.dp_world,
                           train_graph=cfg.compile and not cfg.dropout, show=layout.master,
                           byte_counts=run.byte_counts)
    run.history["eval"].append((progress.iter_num, losses["train"], losses["val"]))
    if cfg.hellaswag_interval and nth_evaluation(cfg, cfg.hellaswag_interval, progress.iter_num):
        scores = hellaswag(run.model, run.tokenizer, run.hellaswag, layout.device, run.ctx, layout.dp_rank,
                           layout.dp_world, show=layout.master)
        losses |= {"hellaswag_acc": scores["acc"], "hellaswag_acc_norm": scores["acc_norm"]}
    run.evaluation = {"iter": progress.iter_num} | losses
    if layout.master:
        log_evaluation(run, losses)
        if cfg.wandb_log:
            import wandb

            extra = {f"val/{k.removeprefix('val_')}": v for k, v in losses.items() if k not in ("train", "val")}
            wandb.log({"iter": progress.iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr,
                       **extra})  # val/bpb, val/hellaswag_acc, ...
    if not math.isfinite(losses["val"]):  # the weights have diverged: saving them would replace a good checkpoint
        raise UserError(f"the val loss is {losses['val']} at iter {progress.iter_num}: the model has diverged; "
                        f"not saving it (the last good checkpoint in {cfg.out_dir} stays): lower learning_rate")
    improved = losses["val"] < progress.best_val_loss
    reached = cfg.target_val_loss is not None and losses["val"] <= cfg.target_val_loss
    if (improved or cfg.always_save_checkpoint or reached) and progress.iter_num > 0 and not cfg.eval_only:
        progress.best_val_loss = min(progress.best_val_loss, losses["val"])
        path = save(run, best=improved)
        if layout.master:
            best = checkpoint.SHARDED[checkpoint.BEST_FILE] if layout.sharded else checkpoint.BEST_FILE
            print(f"saved checkpoint to {path}" + (f" (the best so far, also {best})" if improved else ""))
    if cfg.sample_interval and nth_evaluation(cfg, cfg.sample_interval, progress.iter_num) and layout.master and \
            not layout.sharded:
        show_samples(run)
    if reached and layout.master:
        print(target_report(run, losses["val"]), flush=True)
    return reached


def log_evaluation(run: Run, losses: dict[str, float]) -> None:
    """Rank 0: an evaluation's line (HellaSwag's on its own), and its row in metrics.jsonl."""
    it = run.progress.iter_num
    bpb = f", val bpb {losses['val_bpb']:.4f}" if "val_bpb" in losses else ""
    print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{bpb}"
          f"{peak_memory(run.layout.device)}")
    if "hellaswag_acc" in losses:
        print(f"step {it}: hellaswag acc {losses['hellaswag_acc']:.4f}, acc_norm {losses['hellaswag_acc_norm']:.4f} "
              f"({len(run.hellaswag):,} examples)")
    if run.metrics:
        others = {k: v for k, v in losses.items() if k not in ("train", "val")}  # bits per byte, HellaSwag
        run.metrics.write("eval", time.perf_counter() - run.launched, iter=it,
                          tokens=it * tokens_per_iter(run.cfg, run.model), train_loss=losses["train"],
                          val_loss=losses["val"], **others)


def nth_evaluation(cfg: TrainConfig, n: int, it: int) -> bool:
    """Whether the evaluation at iteration `it` is one of every n (or the run's last)."""
    return it % (cfg.eval_interval * n) == 0 or it == cfg.max_iters


def target_report(run: Run, val_loss: float) -> str:
    """The speedrun's measure of reaching target_val_loss: steps, tokens, wall time since launch, device-hours."""
    seconds = time.perf_counter() - run.launched
    tokens = run.progress.iter_num * tokens_per_iter(run.cfg, run.model)
    device = "GPU" if run.layout.device.type == "cuda" else run.layout.device.type.upper()
    return (f"target val loss {run.cfg.target_val_loss} reached: {val_loss:.4f} at iter {run.progress.iter_num}, "
            f"{tokens:,} tokens, {seconds:.1f} s from launch, {seconds * run.layout.world / 3600:.4f} "
            f"{device}-hours ({run.layout.world} {device}(s))")


def peak_memory(device: torch.device) -> str:
    """', peak memory N GiB' on a GPU (rank 0's: under FSDP or tensor parallelism the others' are alike)."""
    if device.type != "cuda":
        return ""
    return f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


class Pace:
    """The time per iteration between log lines: the steps since the last restart. Steady: those steps ran at
    their lasting speed (not the first steps of the run, which hold start-up work, nor a CUDA graph's warm-up and
    capture); the first steady interval also says how long the rest of the run will take, and from then on every
    log line its ETA: the wall time per iteration since then, evaluations and checkpoints included."""

    def __init__(self) -> None:
        self.restart(steady=False)
        self.shown = False
        self.anchor: tuple[float, int] | None = None  # (time, iteration) where the first steady interval began
        self.next_line: int | None = None  # several processes: the iteration of the next line, agreed (plan);
        # None before the first, which comes after the first step

    def restart(self, steady: bool) -> None:
        self.since = time.perf_counter()
        self.iters = 0
        self.steady = steady

    def tick(self) -> None:
        self.iters += 1

    def seconds_per_iter(self) -> float:  # only when read: a CUDA graph's steps are queued in microseconds
        return (time.perf_counter() - self.since) / self.iters

    def overdue(self, iter_num: int, distributed: bool) -> bool:
        """Whether a log line is due by time: QUIET_S since the last line (or evaluation). Processes' clocks differ,
        and a line is a collective step, so several processes keep to the iteration they agreed at the last line."""
        if distributed:
            return self.next_line is None or iter_num >= self.next_line
        return time.perf_counter() - self.since >= QUIET_S

    def plan(self, iter_num: int, log_interval: int, seconds_per_iter: float, device: torch.device) -> None:
        """Several processes, at a log line: agree on the iteration of the next, within QUIET_S at the slowest
        process's pace (and never later than log_interval says)."""
        steps = max(1, min(log_interval, int(QUIET_S / max(seconds_per_iter, 1e-9))))
        agreed = torch.tensor(steps, device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        self.next_line = iter_num + int(agreed.item())

    def eta(self, iter_num: int, max_iters: int) -> float | None:
        """Seconds until max_iters at the pace since the first steady interval began; None before it ends."""
        if self.anchor is None:
            if self.steady:
                self.anchor = (self.since, iter_num - self.iters)
            return None
        began, first = self.anchor
        return (time.perf_counter() - began) / (iter_num - first) * (max_iters - iter_num)


def log_step(run: Run, loss_sum: torch.Tensor, lr: float, pace: Pace) -> None:
    """Record the mean training loss of the step (over all processes) and print it with its speed."""
    layout = run.layout
    if layout.distributed:
        dist.all_reduce(loss_sum)  # gloo has no AVG: sum, then divide
    loss = loss_sum.item() / layout.world  # waits for the device: the steps queued are done
    dt = pace.seconds_per_iter()
    if layout.distributed:
        pace.plan(run.progress.iter_num, run.cfg.log_interval, dt, layout.device)
    run.history["train_loss"].append((run.progress.iter_num, loss))
    if not layout.master:
        return
    tokens = tokens_per_iter(run.cfg, run.model)
    mfu = run.model.estimate_mfu(tokens // layout.world, dt, runtime.peak_flops(layout.device))
    mfu_text = f", mfu {mfu * 100:.1f}%" if mfu is not None else ""
    eta = pace.eta(run.progress.iter_num, run.cfg.max_iters)
    eta_text = f", eta {duration(eta)}" if eta is not None and run.progress.iter_num < run.cfg.max_iters else ""
    print(f"iter {run.progress.iter_num}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
          f"{tokens / dt:,.0f} tok/s{mfu_text}{peak_memory(layout.device)}{eta_text}")
    if run.metrics:
        memory = torch.cuda.max_memory_allocated(layout.device) / 2**30 if layout.device.type == "cuda" else None
        run.metrics.write("train", time.perf_counter() - run.launched, iter=run.progress.iter_num,
                          tokens=run.progress.iter_num * tokens, loss=loss, lr=lr, ms_per_iter=dt * 1000,
                          tok_per_s=tokens / dt, mfu=mfu, peak_mem_gib=memory)
    remaining = run.cfg.max_iters - run.progress.iter_num
    if pace.steady and not pace.shown and remaining > 0:
        print(f"at this pace the remaining {remaining:,} iterations take about {duration(remaining * dt)}, "
              "evaluations not included", flush=True)
        pace.shown = True


def duration(seconds: float) -> str:
    """A rough human reading of a duration: '45 s', '12 min', '3.4 h', '2.1 days'."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ----------------------------------------------------------------------------------------------------------------
# the loop


def stop_agreed(stop: StopRequest, layout: Layout) -> str | None:
    """The signal to stop for, the same on every process: under torchrun they vote (rank 0's signal names it)."""
    if not layout.distributed:
        return stop.signal
    vote = torch.tensor(float(stop.signal is not None), device=layout.device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return (stop.signal or "a signal to another process") if vote.item() else None


def train(run: Run) -> None:
    """Until max_iters or a stop request: the learning rate -> evaluation and checkpoint -> the accumulated
    micro-steps and the update -> the log line and the watchdog -> a stop request, if any."""
    cfg, layout, progress, step = run.cfg, run.layout, run.progress, run.step
    latest = checkpoint.SHARDED[checkpoint.CKPT_FILE] if layout.sharded else checkpoint.CKPT_FILE
    ckpt_path = os.path.join(cfg.out_dir, latest)
    watchdog = Watchdog(layout.device, cfg.max_skipped_steps, layout.distributed, layout.master, ckpt_path)
    batch = run.train_data.get(run.first_micro_batch(), layout.device)
    pace = Pace()
    with StopRequest() as stop:
        while True:
            lr = get_lr(progress.iter_num, cfg)
            set_lr(run.optimizer, lr)

            # evaluate and save; a resumed run evaluates where it starts, if due: a stop may have come between a
            # step and its evaluation
            due = progress.iter_num % cfg.eval_interval == 0 or progress.iter_num == cfg.max_iters
            if cfg.eval_only or (due and (progress.iter_num > 0 or cfg.eval_at_start)):
                reached = evaluate_and_save(run, lr)
                pace.restart(step.steady)  # evaluation time is not training time
                if reached:
                    return
            if progress.iter_num >= cfg.max_iters or cfg.eval_only:
                return

            # the accumulated micro-steps and the update
            loss_sum, applied, batch = step(run.first_micro_batch(), batch)
            watchdog.record(applied)
            progress.iter_num += 1
            progress.batch_pos += cfg.gradient_accumulation_steps
            pace.tick()

            # log (every log_interval iterations, and at least every QUIET_S), and stop a run whose updates keep
            # being skipped
            logged = progress.iter_num % cfg.log_interval == 0 or pace.overdue(progress.iter_num, layout.distributed)
            if logged:
                log_step(run, loss_sum, lr, pace)
                pace.restart(step.steady)
                watchdog.check(progress.iter_num)

            # a stop request: one process checks its flag every step; several vote when they log (which syncs)
            reason = stop_agreed(stop, layout) if logged or not layout.distributed else None
            if reason:
                path = save(run)
                if layout.master:
                    print(f"{reason}: stopped after iter {progress.iter_num}, saved checkpoint to {path}; continue "
                          "with --init_from=resume", flush=True)
                return


def main(argv: list[str]) -> dict[str, list]:
    """Train as the settings say; returns the history of training and evaluation losses."""
    launched = time.perf_counter()
    cfg, changes = load_settings(argv)
    check_settings(cfg)
    layout = parallel.setup(cfg.device, cfg.backend, cfg.tensor_parallel, cfg.fsdp, cfg.gradient_accumulation_steps)
    if changes and layout.master:
        print(changes)
    parallel.refuse_together(layout, check_micro_batch, cfg, layout)
    dtype = runtime.resolve_dtype(cfg.dtype, layout.device)
    if not cfg.dry_run:  # a dry run accounts the model in one process, whatever the layout
        parallel.refuse_together(layout, parallel.check_run, layout, dtype, cfg.fsdp, cfg.tensor_parallel, cfg.fp8)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    runtime.enable_tf32(layout.device)
    meta = data_meta(cfg, required=not cfg.dry_run)
    model, ckpt = described_model(cfg, layout, meta, dtype)
    if cfg.dry_run:
        micro = microbatch.parse(cfg.micro_batch, cfg.batch_size, None)  # checked against the share above
        print(accounting.dry_run(model.config, cfg.batch_size, cfg.gradient_accumulation_steps, layout.dp_world, dtype,
                                 cfg.activation_checkpointing, micro))
        data_meta(cfg)  # what the run itself would need, refused now as it would refuse it
        if cfg.wandb_log:
            configurator.require("wandb", "wandb_log=True")
        return {"train_loss": [], "eval": []}
    with contextlib.ExitStack() as held:  # out_dir's lock and stdout's stand-in, released however main ends
        held.enter_context(contextlib.redirect_stdout(StdoutOrStderr(sys.stdout)))
        parallel.rank_0_decides(layout, lambda: claim_out_dir_and_check_wandb(cfg, held))
        cfg = without_a_graph_it_cannot_capture(cfg, layout, dtype)
        if layout.master:
            warn_if_gpu_recipe_on_cpu(model, layout.device, tokens_per_iter(cfg, model))
            if note := schedule_note(cfg):
                print(note)
        run = start_run(cfg, layout, meta, model, ckpt, dtype)
        run.launched = launched
        if layout.master:
            begin_record(run, ckpt, held)
        del ckpt  # free its memory before training
        if layout.master:
            print(f"\n{model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters "
                  f"({accounting.non_embedding_params(model) / 1e6:.2f}M non-embedding), device {layout.device}, "
                  f"{dtype}, {layout.describe(cfg.fsdp)}, {tokens_per_iter(cfg, model):,} tokens per iteration")
        if cfg.wandb_log and layout.master:
            import wandb

            wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=asdict(cfg))
        train(run)
        if cfg.wandb_log and layout.master:
            wandb.finish()
    if layout.distributed:
        dist.destroy_process_group()
    return run.history


def without_a_graph_it_cannot_capture(cfg: TrainConfig, layout: Layout, dtype: torch.dtype) -> TrainConfig:
    """cuda_graph=True is a recipe's hint, as compile is: where the step cannot be captured the run goes on without
    it, and on a GPU says why (a CPU or MPS run has no CUDA graph to miss)."""
    blocker = cfg.cuda_graph and graph_blocker(layout.device, layout.distributed, dtype, cfg.activation_checkpointing)
    if not blocker:
        return cfg
    if layout.master and layout.device.type == "cuda":
        print(f"cuda_graph=True: the step runs without a CUDA graph here: {blocker}")
    return replace(cfg, cuda_graph=False)


def described_model(cfg: TrainConfig, layout: Layout, meta: dict[str, Any],
                    dtype: torch.dtype) -> tuple[GPT, checkpoint.Checkpoint | None]:
    """build_model's model and checkpoint, its sizes checked against the tensor-parallel split and its parameter
    table printed; each data-parallel share then draws its own dropout masks."""
    model, ckpt = build_model(cfg, meta, layout.device, dtype, sharded=layout.sharded and not cfg.dry_run)
    if layout.tp > 1:  # the sizes the split must divide, known now (from the checkpoint, when resuming)
        parallel.refuse_together(layout, parallel.check_sizes, model.config, layout.tp)
    if layout.dp_rank:  # each data-parallel share its own dropout masks; a tensor-parallel group the same ones
        torch.manual_seed(cfg.seed + layout.dp_rank)
    if layout.master:
        print(accounting.table(model, dtype, cfg.optimizer))
    return model, ckpt


if __name__ == "__main__":
    process.run(main)
