"""Train a GPT on one device or several under torchrun (DDP; FSDP and tensor parallelism: parallel.py).

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
    python train.py config/train_shakespeare_char.py config/arch/llama.py --out_dir=out-llama  # another block
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    torchrun --standalone --nproc_per_node=2 train.py config/train_gpt2_xl.py  # FSDP: a model too big for one GPU
    python train.py config/train_gpt2.py --dry_run=True  # the model's accounting and the batch arithmetic only

Data are data/<dataset>/{train,val}.bin with their meta.json (see data/*/prepare.py). Checkpoints go to
out_dir/ckpt.pt (the latest) and out_dir/best.pt (the best validation loss); init_from=resume continues exactly
where ckpt.pt stopped (same losses as an unbroken run).

Read top to bottom: the settings (a resumed run's too); the learning-rate schedule; `main`, the run's story; the
loop (`train`) and what it does once in a while (evaluate, save, show samples); then the run's setup and the
checks. Each part of the machinery lives in a module named for its idea: source.py (the model: from scratch, a
checkpoint, GPT-2), microbatch.py (the batch plan), step.py (the step's assembly, one optimizer step, its CUDA
graph, the watchdog), optim.py (the optimizers and their rates), dataloader.py (the batches), evaluate.py (the
loss, bits per byte, HellaSwag), generate.py (the samples), metrics.py (the printed lines, metrics.jsonl, wandb),
checkpoint.py, parallel.py, process.py.
"""

from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

import accounting
import checkpoint
import configurator
import metrics
import microbatch
import optim
import parallel
import process
import runtime
import source
from checkpoint import Progress
from configurator import UserError
from datafiles import bin_path, read_meta
from dataloader import ORDERS, Batches, EvalBatches
from evaluate import HellaSwagExample, bytes_per_token, estimate_loss, hellaswag, hellaswag_for_run
from generate import data_tokenizer, sample_prompts, training_samples
from metrics import Record, cpu_warning
from microbatch import BatchPlan
from model import GPT, ModelSettings
from optim import set_lr
from parallel import Layout
from process import StdoutOrStderr, StopRequest
from step import Parts, Step, Watchdog, graph_wanted
from tokenizer import Tokenizer


# ----------------------------------------------------------------------------------------------------------------
# the settings


@dataclass
class TrainConfig(ModelSettings):
    """Train a GPT. The model settings (preset, n_layer, ...: model.ModelSettings) come first; by default GPT-2 124M
    without biases, on OpenWebText, with nanoGPT's AdamW, warmup and cosine schedule (config/train_gpt2.py sets
    the batch for 8 GPUs)."""

    # I/O
    out_dir: str = "out"  # where ckpt.pt is written (and read by init_from=resume)
    eval_interval: int = 2000  # evaluate, and maybe checkpoint, every this many iterations
    log_interval: int = 1  # print loss, timing and MFU every this many iterations (and at least every metrics.QUIET_S)
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
    data_order: str = "random"  # random: sequences from random tokens (nanoGPT's); shuffled: the file's windows in
    # a random order, none twice before every one has come (dataloader.Batches)
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
    muon_weight_decay: float = 0.0  # muon: the blocks' matrices' decoupled weight decay (lr x this, each step)
    embed_lr: float | None = None  # muon: the peak rate of the embeddings (token, position, value); None: learning_rate
    head_lr: float | None = None  # muon: the peak rate of an untied head; None: learning_rate
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

    @property
    def data_dir(self) -> str:
        return os.path.join(self.data_root, self.dataset)


# A resume takes the settings of the checkpoint's run, unless given, but for those that an invocation says for
# itself (a target the run reached would stop it again at once); those of this machine (a sharded run may be
# resumed in one process, a GPU's micro-batch or dtype may not suit another); and the model's shape, which the
# checkpoint's weights fix (check_resume refuses another) and a preset given must not find overridden. dropout,
# which is not in the weights, is the run's.
NOT_RESUMED = ("init_from", "out_dir", "overwrite", "eval_only", "dry_run", "target_val_loss", "device", "dtype",
               "backend", "fsdp", "tensor_parallel", "micro_batch", "cuda_graph", "fp8",
               *(name for name in ModelSettings.__dataclass_fields__ if name != "dropout"))
# settings whose change on a resume makes another run of it (beside the dataset and the sequences per step)
SCHEDULE = ("learning_rate", "min_lr", "muon_lr", "embed_lr", "head_lr", "muon_weight_decay", "decay_lr",
            "lr_schedule", "warmup_iters", "lr_decay_iters", "decay_fraction", "max_iters", "data_order")


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
# the learning-rate schedule


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
# main: the run set up


def main(argv: list[str]) -> dict[str, list]:
    """Train as the settings say; returns the history of training and evaluation losses."""
    launched = time.perf_counter()
    process.end_with_launcher()  # a torchrun worker never outlives its launcher
    with parallel.alike_everywhere():
        cfg, changes = load_settings(argv)
        check_settings(cfg)
        layout = parallel.setup(cfg.device, cfg.backend, cfg.tensor_parallel, cfg.fsdp,
                                cfg.gradient_accumulation_steps)
    if changes and layout.master:
        print(changes)
    parallel.refuse_together(layout, microbatch.check, cfg.micro_batch, cfg.batch_size,
                             cfg.gradient_accumulation_steps, layout)
    dtype = runtime.resolve_dtype(cfg.dtype, layout.device)
    if not cfg.dry_run:  # a dry run accounts the model in one process, whatever the layout
        parallel.refuse_together(layout, parallel.check_run, layout, dtype, cfg.fsdp, cfg.tensor_parallel, cfg.fp8)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    runtime.enable_tf32(layout.device)
    with parallel.alike_everywhere():
        meta = source.data_meta(cfg.data_dir, cfg.preset, cfg.dry_run)
    model, ckpt = model_to_train(cfg, layout, meta, dtype)
    if cfg.dry_run:  # the batch arithmetic and memory estimate; what the run itself needs refused as it would be
        print(accounting.dry_run(model.config, cfg.batch_size, cfg.gradient_accumulation_steps, layout.dp_world,
                                 cfg.micro_batch, dtype, cfg.activation_checkpointing))
        read_meta(cfg.data_dir)
        if cfg.wandb_log:
            configurator.require("wandb", "wandb_log=True")
        return {"train_loss": [], "eval": []}
    with contextlib.ExitStack() as held:  # out_dir's lock, metrics.jsonl, wandb, stdout's stand-in: released
        held.enter_context(contextlib.redirect_stdout(StdoutOrStderr(sys.stdout)))  # however main ends

        def rank_0_needs() -> None:
            if cfg.wandb_log:
                configurator.require("wandb", "wandb_log=True")
            if not cfg.eval_only:
                held.enter_context(checkpoint.hold_out_dir(cfg.out_dir, cfg.init_from == "resume", cfg.overwrite))
            if not cfg.eval_only and cfg.init_from == "resume":
                metrics.read(cfg.out_dir)  # a damaged log refused now, every process stopping, not at its first row

        parallel.rank_0_decides(layout, rank_0_needs)
        cfg = replace(cfg, cuda_graph=graph_wanted(cfg.cuda_graph, layout, dtype, cfg.activation_checkpointing))
        if layout.master and (note := schedule_note(cfg)):
            print(note)
        if layout.master and cfg.sample_interval and layout.sharded:
            print("note: sample_interval: no samples during training with sharded weights (fsdp, tensor_parallel)")
        run = start_run(cfg, layout, meta, model, ckpt, dtype, launched, held)
        del ckpt  # free its memory before training
        train(run)
    process.close_group()
    return run.history


# ----------------------------------------------------------------------------------------------------------------
# the loop


def train(run: Run) -> None:
    """Until max_iters or a stop request: the learning rate -> once in a while, evaluation, checkpoint and samples
    -> the accumulated micro-steps and the update -> the log line and the watchdog -> a stop request, if any."""
    cfg, layout, progress, step, record = run.cfg, run.layout, run.progress, run.step, run.record
    watchdog = Watchdog(layout.device, cfg.max_skipped_steps, layout.distributed, layout.master,
                        os.path.join(cfg.out_dir, checkpoint.file_name(checkpoint.CKPT_FILE, layout.sharded)))
    batch = run.train_data.get(run.plan.first_micro_batch(progress.batch_pos), layout.device)
    record.pace.restart(steady=False)  # the set-up's time is not the first steps'
    with StopRequest() as stop:
        while True:
            lr = get_lr(progress.iter_num, cfg)
            set_lr(run.parts.optimizer, lr)

            # once in a while: evaluate, save, show samples. A resumed run evaluates where it starts, if due: a
            # stop may have come between a step and its evaluation
            due = progress.iter_num % cfg.eval_interval == 0 or progress.iter_num == cfg.max_iters
            if cfg.eval_only or (due and (progress.iter_num > 0 or cfg.eval_at_start)):
                reached = evaluate_and_save(run, lr)
                record.pace.restart(step.steady)  # evaluation time is not training time
                if reached:
                    return
            if progress.iter_num >= cfg.max_iters or cfg.eval_only:
                return

            # the accumulated micro-steps and the update
            loss_sum, applied, batch = step(run.plan.first_micro_batch(progress.batch_pos), batch)
            watchdog.record(applied)
            progress.iter_num += 1
            progress.batch_pos += cfg.gradient_accumulation_steps
            record.pace.tick()

            # log (every log_interval iterations, and at least every QUIET_S), and stop a run whose updates keep
            # being skipped
            logged = record.due(progress.iter_num)
            if logged:
                loss = record.step(progress.iter_num, loss_sum, lr)
                run.history["train_loss"].append((progress.iter_num, loss))
                record.pace.restart(step.steady)
                watchdog.check(progress.iter_num)

            # a stop request: one process checks its flag every step; several vote when they log (which syncs)
            if (logged or not layout.distributed) and parallel.anyone(layout, stop.signal is not None):
                reason = stop.signal or "a signal to another process"
                path = save(run)
                if layout.master:
                    print(f"{reason}: stopped after iter {progress.iter_num}, saved checkpoint to {path}; continue "
                          "with --init_from=resume", flush=True)
                return


def evaluate_and_save(run: Run, lr: float) -> bool:
    """Evaluate (HellaSwag too, every hellaswag_interval evaluations), record it, save a checkpoint if val loss
    improved (or always_save_checkpoint, or the target is reached), show samples every sample_interval
    evaluations. Returns whether the val loss reached target_val_loss."""
    cfg, layout, progress, model, ctx = run.cfg, run.layout, run.progress, run.parts.model, run.parts.ctx
    losses = estimate_loss(run.eval_model, run.evals, layout.device, ctx, layout.dp_rank, layout.dp_world,
                           train_graph=cfg.compile and not cfg.dropout, show=layout.master,
                           byte_counts=run.byte_counts)
    run.history["eval"].append((progress.iter_num, losses["train"], losses["val"]))
    if cfg.hellaswag_interval and nth_evaluation(cfg, cfg.hellaswag_interval, progress.iter_num):
        scores = hellaswag(model, run.tokenizer, run.hellaswag, layout.device, ctx, layout.dp_rank,
                           layout.dp_world, show=layout.master)
        losses |= {"hellaswag_acc": scores["acc"], "hellaswag_acc_norm": scores["acc_norm"]}
    run.evaluation = {"iter": progress.iter_num} | losses
    if layout.master:
        run.record.evaluation(progress.iter_num, losses, lr, len(run.hellaswag))
    if not math.isfinite(losses["val"]):  # the weights have diverged: saving them would replace a good checkpoint
        raise UserError(f"the val loss is {losses['val']} at iter {progress.iter_num}: the model has diverged; "
                        f"not saving it (the last good checkpoint in {cfg.out_dir} stays): lower learning_rate")
    improved = losses["val"] < progress.best_val_loss
    reached = cfg.target_val_loss is not None and losses["val"] <= cfg.target_val_loss
    if (improved or cfg.always_save_checkpoint or reached) and progress.iter_num > 0 and not cfg.eval_only:
        progress.best_val_loss = min(progress.best_val_loss, losses["val"])
        path = save(run, best=improved)
        if layout.master:
            best = checkpoint.file_name(checkpoint.BEST_FILE, layout.sharded)
            print(f"saved checkpoint to {path}" + (f" (the best so far, also {best})" if improved else ""))
    if cfg.sample_interval and nth_evaluation(cfg, cfg.sample_interval, progress.iter_num) and layout.master and \
            not layout.sharded:  # from a random state of their own: training goes on exactly as without them
        prompts = sample_prompts(cfg.sample_prompts, run.tokenizer)
        for prompt, texts in training_samples(model, run.tokenizer, prompts, layout.device, ctx, cfg.sample_tokens,
                                              cfg.seed):
            run.record.samples(progress.iter_num, prompt, texts)
    if reached and layout.master:
        print(run.record.target_reached(cfg.target_val_loss, losses["val"], progress.iter_num), flush=True)
    return reached


def nth_evaluation(cfg: TrainConfig, n: int, it: int) -> bool:
    """Whether the evaluation at iteration `it` is one of every n (or the run's last)."""
    return it % (cfg.eval_interval * n) == 0 or it == cfg.max_iters


def save(run: Run, best: bool = False) -> str | None:
    """The run's state as a checkpoint (every process calls this); the path on rank 0."""
    header = checkpoint.Header.for_run(run.parts.model.config, run.progress, run.meta, asdict(run.cfg),
                                       run.layout.device, run.evaluation)
    return checkpoint.save_run(run.cfg.out_dir, run.layout, run.parts.model, run.parts.optimizer, run.parts.scaler,
                               header, best)


# ----------------------------------------------------------------------------------------------------------------
# the run's setup: what the loop works with


@dataclass
class Run:
    """What the loop works with. Three views of one set of weights: `parts.model`, the plain module (what is
    saved); `eval_model`, the same compiled (what is evaluated); and inside `step`, that wrapped in DDP when
    distributed (what is trained). A sharded model is all three: sharded and compiled in place."""

    cfg: TrainConfig
    layout: Layout
    meta: dict[str, Any]
    parts: Parts  # the placed model, its optimizer, the gradient scaler, the autocast context
    eval_model: torch.nn.Module
    step: Step  # one optimizer step: step(index, batch)
    plan: BatchPlan
    train_data: Batches
    evals: dict[str, EvalBatches]  # the same batches at every evaluation
    progress: Progress
    record: Record
    history: dict[str, list] = field(default_factory=lambda: {"train_loss": [], "eval": []})  # for the tests
    tokenizer: Tokenizer | None = None  # the data's, where it can be built here: bits per byte, samples
    byte_counts: torch.Tensor | None = None  # UTF-8 bytes per token id on the device, for bits per byte
    hellaswag: list[HellaSwagExample] = field(default_factory=list)  # with hellaswag_interval
    evaluation: dict[str, float] | None = None  # the latest evaluation's figures and iter, for the checkpoints


def model_to_train(cfg: TrainConfig, layout: Layout, meta: dict[str, Any],
                   dtype: torch.dtype) -> tuple[GPT, checkpoint.Checkpoint | None]:
    """source.for_training's model and checkpoint, its sizes checked against the tensor-parallel split and its
    parameter table printed; each data-parallel share then draws its own dropout masks."""
    def fits(config: Any) -> None:
        micro = microbatch.parse(cfg.micro_batch, cfg.batch_size, None)
        accounting.check_training_fits(config, cfg.optimizer, micro, cfg.batch_size, dtype,
                                       cfg.activation_checkpointing, layout.device)

    model, ckpt = source.for_training(cfg, cfg.init_from, cfg.out_dir, cfg.optimizer, meta, cfg.data_dir,
                                      layout.device, fits, cfg.dry_run,
                                      sharded=layout.sharded and not cfg.dry_run)
    if layout.tp > 1:  # the sizes the split must divide, known now (from the checkpoint, when resuming)
        parallel.refuse_together(layout, parallel.check_sizes, model.config, layout.tp)
    parallel.refuse_together(layout, optim.check_head_lr, cfg.head_lr, model.config)
    if layout.dp_rank:  # each data-parallel share its own dropout masks; a tensor-parallel group the same ones
        torch.manual_seed(cfg.seed + layout.dp_rank)
    if layout.master:
        print(accounting.table(model, dtype, cfg.optimizer))
    return model, ckpt


def start_run(cfg: TrainConfig, layout: Layout, meta: dict[str, Any], model: GPT, ckpt: checkpoint.Checkpoint | None,
              dtype: torch.dtype, launched: float, held: contextlib.ExitStack) -> Run:
    """The run's parts (step.Parts: placed, with the optimizer), its batch plan (a micro-batch of auto probed
    before any optimizer state), the checkpoint's state restored into them, the batches, the compiled and
    DDP-wrapped (or sharded) model and its step; and its record begun (metrics.Record: what the run is, where it
    starts, metrics.jsonl and wandb, for the run's life: `held`)."""
    device = layout.device
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"{cfg.data_dir} has {meta['vocab_size']} token ids, the model only "
                        f"{model.config.vocab_size}")
    parts = Parts.assemble(model, layout, dtype, lambda m: optim.build(
        m, cfg.optimizer, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), device.type, cfg.muon_lr,
        cfg.muon_momentum, cfg.embed_lr, cfg.head_lr, cfg.muon_weight_decay), cfg.fsdp, cfg.activation_checkpointing,
        cfg.compile, cfg.fp8)
    plan = microbatch.plan(cfg.micro_batch, cfg.batch_size, cfg.gradient_accumulation_steps, layout, model,
                           parts.optimizer, parts.ctx, meta["vocab_size"])
    if layout.master and (warning := cpu_warning(model.flops_per_token() * plan.tokens_per_iter, device)):
        print(warning, flush=True)  # before minutes of compiling
    progress = Progress()
    if ckpt is not None:
        checkpoint.restore_run(ckpt, layout, model, parts.optimizer, parts.scaler)
        progress = ckpt.header.progress
    # the batches, in micro-batches, read as the recipe's batches of batch_size (the data's order whatever the
    # micro-batch); ids past the data's vocabulary (the model's padding rows, which mean nothing) refused
    T, vocab, micro = model.config.block_size, meta["vocab_size"], plan.micro
    train_data = Batches(bin_path(cfg.data_dir, "train"), meta["dtype"], T, micro, vocab, cfg.seed,
                         group=cfg.batch_size, order=cfg.data_order)
    evals = {split: EvalBatches(bin_path(cfg.data_dir, split), meta["dtype"], T, micro, vocab, cfg.eval_iters,
                                group=cfg.batch_size) for split in ("train", "val")}
    parallel.refuse_together(layout, plan.check_start, progress.batch_pos)
    batch = train_data.get(plan.first_micro_batch(progress.batch_pos), device)  # to compile the model with
    eval_model, step = parts.stepper(train_data, batch, plan.micro_steps, layout.dp_world, cfg.grad_clip,
                                     cfg.cuda_graph)
    tok = data_tokenizer(meta, cfg.sample_interval, cfg.sample_prompts)  # refuses before the record is begun
    peak = runtime.peak_flops(device)
    record = Record(layout, plan.tokens_per_iter, cfg.max_iters, cfg.log_interval, launched,
                    lambda tokens, dt: model.estimate_mfu(tokens, dt, peak))
    if layout.master:
        wandb = {"project": cfg.wandb_project, "name": cfg.wandb_run_name, "config": asdict(cfg)}
        record.begin(held, [f"resumed from {ckpt.where()}"] if ckpt is not None else [], accounting.size(model),
                     dtype, layout.describe(cfg.fsdp), None if cfg.eval_only else cfg.out_dir, progress.iter_num,
                     progress.iter_num % cfg.eval_interval == 0, wandb if cfg.wandb_log else None)
    return Run(cfg, layout, meta, parts, eval_model, step, plan, train_data, evals, progress, record,
               evaluation=ckpt.header.evaluation if ckpt is not None else None, tokenizer=tok,
               hellaswag=hellaswag_for_run(cfg.hellaswag_interval, cfg.hellaswag, tok, layout.sharded),
               byte_counts=bytes_per_token(tok, model.config.vocab_size, device))


# ----------------------------------------------------------------------------------------------------------------
# checks made before any training time is spent


def check_settings(cfg: TrainConfig) -> None:
    if cfg.init_from not in source.INIT_FROM:
        raise UserError(f"init_from must be scratch, resume or one of {source.INIT_FROM[2:]}, got '{cfg.init_from}'")
    for name in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_iters", "eval_interval",
                 "log_interval", "vocab_multiple", "tensor_parallel", "sample_tokens"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must be at least 0, got {getattr(cfg, name)}")
    if cfg.target_val_loss is not None and not cfg.target_val_loss > 0:  # a cross-entropy is never below 0
        raise UserError(f"target_val_loss must be above 0 (a loss a run can reach), got {cfg.target_val_loss}")
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
    for name, allowed in (("optimizer", ("adamw", "muon")), ("lr_schedule", ("cosine", "wsd")),
                          ("data_order", ORDERS)):
        if getattr(cfg, name) not in allowed:
            raise UserError(f"{name} must be {' or '.join(allowed)}, got '{getattr(cfg, name)}'")
    if not 0 <= cfg.decay_fraction <= 1 or cfg.muon_lr < 0:
        raise UserError(f"decay_fraction must be in [0, 1] and muon_lr at least 0, got {cfg.decay_fraction} and "
                        f"{cfg.muon_lr}")
    # a rate above 1 moves a weight by more than 1 a step
    for name in ("learning_rate", "min_lr", "muon_lr", "embed_lr", "head_lr"):
        rate = getattr(cfg, name)
        if rate is not None and not 0 <= rate <= 1:
            raise UserError(f"{name} must be in [0, 1], got {rate}")
    optim.check_muon_settings(cfg.optimizer, cfg.embed_lr, cfg.head_lr, cfg.muon_weight_decay)
    if cfg.decay_lr and cfg.min_lr > cfg.learning_rate:
        raise UserError(f"min_lr ({cfg.min_lr}) is above learning_rate ({cfg.learning_rate}): the schedule would "
                        "rise after warmup")


if __name__ == "__main__":
    process.run(main)
