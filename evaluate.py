"""How good the model is: its mean loss per token (and bits per byte) on the train and val splits, over the same
batches at every evaluation (dataloader.EvalBatches), shared out across the data-parallel processes; and its
zero-shot HellaSwag accuracy. train.py evaluates through these; as a command, for any checkpoint:

    python evaluate.py --out_dir=out-shakespeare-char               # val loss and bits per byte on its own data
    python evaluate.py --out_dir=out-gpt2 --tasks=train,val,hellaswag --hellaswag=hellaswag_val.jsonl
    python evaluate.py --init_from=gpt2 --tasks=hellaswag --limit=1000  # OpenAI's weights; the file downloaded once
    python evaluate.py --init_from=gpt2 --dataset=openwebtext           # their loss needs data: they have none

tasks (comma-separated) says what to measure: val and train, a split's loss and bits per byte; hellaswag, for
models with GPT-2's BPE only. By default val, and hellaswag too where --hellaswag names a file. The loss is
measured on the dataset the checkpoint was trained on (its data_root and dataset) unless --dataset /
--data_root name others, whose tokenizer must be the model's; over the run's own eval_iters batches of its
batch_size sequences unless given, the same sequences its evaluations read: the figures are those train.py
--init_from=resume --eval_only=True reports. main returns them, named as train.py's evaluation names them.
"""

from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
import json
import math
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import checkpoint
import configurator
import process
import runtime
from configurator import UserError
from datafiles import read_meta
from dataloader import EvalBatches
from model import GPT, round_up
from source import Source, check_tokens
from tokenizer import Tokenizer

PROGRESS_S = 10.0  # in a log, a long evaluation prints its progress this often
BAR_S = 0.1  # on a terminal, the bar is redrawn at most this often


class ProgressBar:
    """A long pass's progress: on a terminal a tqdm bar (stderr), cleared when the pass ends; in a log (stderr not
    a terminal, where a bar's redrawn line would be noise) a line every PROGRESS_S seconds, so that a long
    evaluation shows it is alive. Nothing where not shown (the other data-parallel ranks).

    A tqdm is made only for a bar on a terminal: every tqdm takes a lock shared with forked processes, which one
    killed while holding it would leave held for ever (a training run forked and killed, as tests do)."""

    def __init__(self, total: int, what: str, unit: str, show: bool) -> None:
        self.what, self.unit, self.total, self.done = what, unit, total, 0
        self.shown = time.perf_counter()
        self.line = show and not sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=what, unit=unit, leave=False, mininterval=BAR_S) \
            if show and not self.line else None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.line and time.perf_counter() - self.shown > PROGRESS_S:
            print(f"{self.what}: {self.done:,} of {self.total:,} {self.unit}", flush=True)
            self.shown = time.perf_counter()



def estimate_loss(model: torch.nn.Module, evals: dict[str, EvalBatches], device: torch.device, ctx: Any,
                  rank: int = 0, world: int = 1, train_graph: bool = False, show: bool = False,
                  byte_counts: torch.Tensor | None = None) -> dict[str, float]:
    """Mean loss per token over each split's batches, batch k read by data-parallel rank k % world (the processes
    of a tensor-parallel group evaluate the same batches, and so add the same sums and counts alike). show: print
    the progress of a long evaluation (rank 0's).

    byte_counts (UTF-8 bytes per token id, on the device: Tokenizer.byte_counts): also each split's bits per
    byte, as "SPLIT_bpb": the targets' summed loss in bits over the bytes of text they stand for. Unlike the loss
    per token it does not depend on the tokenizer, so character and BPE models compare. End-of-text counts no
    bytes, while its loss counts: telling where a document ends is part of the text's information.

    train_graph: run the model in train mode with gradients on (nothing is kept). A compiled model without
    dropout computes the same loss through the graph it was compiled for, where an inference graph would be a
    second compilation before the first step, for a small saving per batch."""
    model.train(train_graph)
    out = {}
    for split, batches in evals.items():
        total = torch.zeros(3, device=device)  # the sum of the token losses, the number of tokens, their bytes
        n = batches.n_batches
        # every process runs as many forward passes (a sharded model gathers its weights in each, all together):
        # where the batches run out, batch 0 again, not counted
        mine = range(rank, round_up(n, world), world)
        with ProgressBar(len(mine), f"evaluating the {split} split", "batches", show) as progress:
            for k in mine:
                x, y = batches.get(k if k < n else 0, device)
                with ctx, torch.set_grad_enabled(train_graph):
                    # the mean over the tokens whose target is not -1
                    loss = model(x, y, return_logits=False)[1].detach().float()
                counted = (y != -1).sum() * (k < n)
                text = (byte_counts[y.clamp(min=0)] * (y != -1)).sum() * (k < n) if byte_counts is not None else \
                    counted * 0
                total += torch.stack([loss * counted, counted, text])
                progress.update(1)
        if dist.is_initialized():  # over every process, so that all agree (on a checkpoint to save, say): a
            # tensor-parallel group adds its identical sums tp times, and its counts
            dist.all_reduce(total)
        loss_sum, count, text = total.tolist()
        out[split] = loss_sum / count
        if byte_counts is not None:
            out[f"{split}_bpb"] = loss_sum / math.log(2) / text if text else math.nan
    model.train()
    return out


def bytes_per_token(tok: Tokenizer | None, vocab_size: int, device: torch.device) -> torch.Tensor | None:
    """estimate_loss's byte_counts: UTF-8 bytes per token id of a model's (padded) vocabulary, on the device
    (Tokenizer.byte_counts); None without a tokenizer, and then the loss alone."""
    if tok is None:
        return None
    return torch.from_numpy(tok.byte_counts(vocab_size)).to(device)


# ----------------------------------------------------------------------------------------------------------------
# HellaSwag, zero-shot (Zellers et al. 2019): which of four endings the model finds likeliest after a context


HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_FILE = os.path.join("data", "hellaswag", "hellaswag_val.jsonl")  # the default, downloaded once


@dataclass(frozen=True)
class HellaSwagExample:
    ctx: str
    endings: tuple[str, ...]  # four
    label: int  # the index of the right ending


def read_hellaswag(path: str) -> list[HellaSwagExample]:
    """The examples of a HellaSwag jsonl file (one JSON object a line with ctx, endings and label, as the
    dataset's own files have them); anything else is a UserError naming the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read HellaSwag file {path}: {getattr(e, 'strerror', None) or e}") from None
    examples = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ctx, endings, label = row["ctx"], row["endings"], row["label"]
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deep
            raise UserError(f"{path} line {n}: not a HellaSwag example (JSON with ctx, endings, label)") from None
        # type(label) is int: JSON's true would pass as 1; an empty context or ending has no token to score
        if not (isinstance(ctx, str) and ctx and isinstance(endings, list) and len(endings) == 4 and
                all(isinstance(e, str) and e for e in endings) and type(label) is int and label in range(4)):
            raise UserError(f"{path} line {n}: ctx must be text, endings four texts (none empty) and label 0 to 3")
        examples.append(HellaSwagExample(ctx, tuple(endings), label))
    if not examples:
        raise UserError(f"{path} holds no HellaSwag examples")
    return examples


def hellaswag_file(path: str) -> str:
    """path, or (empty) the default file, downloaded once where there is a network; offline, a UserError that
    says where to put it."""
    if path:
        if not os.path.isfile(path):
            raise UserError(f"no HellaSwag file at {path}")
        return path
    if os.path.isfile(HELLASWAG_FILE):
        return HELLASWAG_FILE
    os.makedirs(os.path.dirname(HELLASWAG_FILE), exist_ok=True)
    tmp = f"{HELLASWAG_FILE}.tmp.{os.getpid()}"
    try:
        urllib.request.urlretrieve(HELLASWAG_URL, tmp)
        os.replace(tmp, HELLASWAG_FILE)
    except OSError as e:  # no network (URLError is an OSError), or a full disk
        raise UserError(f"HellaSwag's val file is not here and could not be downloaded ({e}): save {HELLASWAG_URL} "
                        f"as {HELLASWAG_FILE}, or pass --hellaswag=PATH") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return HELLASWAG_FILE


def ending_rows(tok: Any, example: HellaSwagExample, block_size: int) -> list[tuple[list[int], int]]:
    """The four (tokens, n) of an example: its context followed by one ending (a space before it, as the endings
    follow the context in the text), the last block_size + 1 tokens of that; n: how many at the end are the
    ending's, the tokens that are scored."""
    context = tok.encode(example.ctx)
    rows = []
    for ending in example.endings:
        tail = tok.encode(" " + ending)
        seq = (context + tail)[-(block_size + 1):]
        rows.append((seq, min(len(tail), len(seq) - 1)))
    return rows


@torch.no_grad()
def ending_losses(model: torch.nn.Module, rows: list[tuple[list[int], int]], device: torch.device,
                  ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row (tokens, n): the summed and the mean loss of its last n tokens given the ones before, in
    one forward pass over the rows padded to the longest (R,) each."""
    width = max(len(seq) for seq, _ in rows) - 1
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.zeros(len(rows), width, dtype=torch.long)
    scored = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (seq, n) in enumerate(rows):
        x[r, : len(seq) - 1] = torch.tensor(seq[:-1])
        y[r, : len(seq) - 1] = torch.tensor(seq[1:])
        scored[r, len(seq) - 1 - n : len(seq) - 1] = True
    x, y, scored = x.to(device), y.to(device), scored.to(device)
    with ctx:
        logits = model(x)[0]
    losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y) * scored
    sums = losses.sum(1)
    return sums, sums / scored.sum(1)


def hellaswag(model: torch.nn.Module, tok: Any, examples: list[HellaSwagExample], device: torch.device, ctx: Any,
              rank: int = 0, world: int = 1, batch_examples: int = 16, show: bool = False) -> dict[str, float]:
    """Zero-shot HellaSwag accuracy: "acc", the share of examples whose right ending has the lowest summed loss,
    and "acc_norm", the lowest mean loss per token (the ending's length taken out); "n", the examples. Example i
    is scored by data-parallel rank i % world, the counts added over the processes."""
    model.eval()
    block = model.config.block_size
    counts = torch.zeros(3, device=device)  # right by summed loss, right by mean loss, examples
    mine = examples[rank::world]
    with ProgressBar(len(mine), "HellaSwag", "examples", show) as progress:
        for start in range(0, len(mine), batch_examples):
            chunk = mine[start : start + batch_examples]
            rows = [row for example in chunk for row in ending_rows(tok, example, block)]
            sums, means = (v.view(len(chunk), 4) for v in ending_losses(model, rows, device, ctx))
            labels = torch.tensor([e.label for e in chunk], device=device)
            counts += torch.stack([(sums.argmin(1) == labels).sum(), (means.argmin(1) == labels).sum(),
                                   torch.tensor(len(chunk), device=device)]).float()
            progress.update(len(chunk))
    if dist.is_initialized():
        dist.all_reduce(counts)
    right, right_norm, n = counts.tolist()
    model.train()
    return {"acc": right / n, "acc_norm": right_norm / n, "n": int(n)}


def hellaswag_for_run(interval: int, path: str, tok: Tokenizer | None, sharded: bool) -> list[HellaSwagExample]:
    """The examples a training run scores at every interval-th evaluation (train.py's hellaswag_interval; 0: none),
    read (or downloaded) before it trains; refused where they cannot be scored: data without GPT-2's BPE, or
    sharded weights (each process would need as many forward passes as the others)."""
    if not interval:
        return []
    if tok is None or tok.kind != "gpt2":
        raise UserError("hellaswag_interval: HellaSwag is English text and needs data tokenized with GPT-2's BPE")
    if sharded:
        raise UserError("hellaswag_interval: not with sharded weights (fsdp, tensor_parallel); score the "
                        "checkpoints with python evaluate.py instead")
    return read_hellaswag(hellaswag_file(path))


# ----------------------------------------------------------------------------------------------------------------
# the command: a checkpoint's (or OpenAI's GPT-2's) figures


TASKS = ("val", "train", "hellaswag")
EVAL_ITERS = 200  # train.py's defaults: the run's own settings where its checkpoint records them
BATCH_SIZE = 12


@dataclass
class EvalConfig:
    """Measure a model: a checkpoint in out_dir, or OpenAI's GPT-2 weights."""

    init_from: str = "resume"  # resume (from out_dir) | gpt2 | gpt2-medium | gpt2-large | gpt2-xl
    out_dir: str = "out"  # the checkpoint's folder (init_from=resume)
    checkpoint: str = "best"  # best | latest
    tasks: str = ""  # comma-separated, of val (the val split's loss and bits per byte) | train (the train split's)
    # | hellaswag (GPT-2 BPE models only); empty: val, and hellaswag too where --hellaswag names a file
    dataset: str = ""  # the data of the loss; empty: the checkpoint's own (OpenAI's weights have none: name one)
    data_root: str = ""  # where the dataset folders are; empty: the checkpoint's own, else data
    eval_iters: int | None = None  # batches per split, at most (fewer where a split holds fewer); None: as many as
    # the run's own evaluations read (its eval_iters), so that the figures are the ones train.py reported
    batch_size: int | None = None  # sequences per batch; None: the run's own batch_size
    hellaswag: str = ""  # HellaSwag's val jsonl; empty: data/hellaswag/hellaswag_val.jsonl, downloaded once
    limit: int = 0  # score the first this many HellaSwag examples; 0: all
    batch_examples: int = 16  # HellaSwag examples per forward pass (4 rows each)
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 elsewhere) | ...


def chosen_tasks(cfg: EvalConfig) -> list[str]:
    """The tasks the settings ask for, the settings checked; a HellaSwag file given is asking for HellaSwag."""
    if cfg.limit < 0 or cfg.batch_examples < 1:
        raise UserError("limit must be at least 0 and batch_examples at least 1")
    for name in ("eval_iters", "batch_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1 (or None: the run's own), got {getattr(cfg, name)}")
    default = ["val", "hellaswag"] if cfg.hellaswag else ["val"]
    tasks = [t.strip() for t in cfg.tasks.split(",") if t.strip()] or default
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task '{unknown[0]}' in tasks={cfg.tasks} (one or more of {', '.join(TASKS)})")
    if cfg.hellaswag and "hellaswag" not in tasks:  # a file given and never read: say so rather than ignore it
        raise UserError(f"hellaswag={cfg.hellaswag} names a file to score, but tasks={cfg.tasks} leaves hellaswag "
                        "out: add it to tasks, or drop hellaswag")
    return tasks


def loss_data(cfg: EvalConfig, header: checkpoint.Header | None, tok: Tokenizer) -> tuple[str, dict[str, Any]]:
    """The folder of the data to measure the loss on (dataset and data_root as given, else the checkpoint's own)
    and its meta.json; refused where its ids are not the model's tokens, as resuming on it would be."""
    def setting(name: str, default: str | None = None) -> Any:
        return header.setting(name, default) if header is not None else default

    dataset = cfg.dataset or setting("dataset")
    if not dataset:
        source = f"checkpoint {cfg.out_dir}" if header is not None else f"init_from={cfg.init_from}"
        alone = ", or score HellaSwag alone (--tasks=hellaswag)" if tok.kind == "gpt2" else ""
        raise UserError(f"{source} names no dataset of its own: name one to measure its loss on (--dataset=NAME, "
                        f"--data_root=DIR){alone}")
    data_dir = os.path.join(cfg.data_root or setting("data_root", "data"), dataset)
    meta = read_meta(data_dir)
    check_tokens(tok.kind, tok.chars if tok.kind == "char" else None, meta, data_dir, "evaluate it on")
    return data_dir, meta


def eval_batches(cfg: EvalConfig, header: checkpoint.Header | None, data_dir: str, meta: dict[str, Any],
                 splits: list[str], block_size: int) -> dict[str, EvalBatches]:
    """Each split's evaluation batches. By default the run's own eval_iters and batch_size: the sequences its
    evaluations read (EvalBatches spreads eval_iters x batch_size of them over the split), so the same figures."""
    def setting(name: str, default: int) -> int:
        return int(header.setting(name, default)) if header is not None else default

    eval_iters = cfg.eval_iters or setting("eval_iters", EVAL_ITERS)
    batch_size = cfg.batch_size or setting("batch_size", BATCH_SIZE)
    # ids past the data's vocabulary (the model's padding rows) are refused, as train.py refuses them
    return {split: EvalBatches(os.path.join(data_dir, f"{split}.bin"), meta["dtype"], block_size, batch_size,
                               meta["vocab_size"], eval_iters) for split in splits}


def report_loss(model: GPT, tok: Tokenizer, evals: dict[str, EvalBatches], data_dir: str, device: torch.device,
                ctx: Any) -> dict[str, float]:
    """Each split's loss and bits per byte, as train.py's evaluation computes them, a line each."""
    byte_counts = bytes_per_token(tok, model.config.vocab_size, device)
    losses = estimate_loss(model, evals, device, ctx, show=True, byte_counts=byte_counts)
    for split, batches in evals.items():
        print(f"{split} loss {losses[split]:.4f}, {losses[f'{split}_bpb']:.4f} bits per byte ({batches.n_batches} "
              f"batches of {batches.batch_size} x {batches.block_size} tokens) on {data_dir}")
    return losses


def main(argv: list[str]) -> dict[str, float]:
    """The figures the tasks ask for, a line each; returned as train.py's evaluation names them (val, val_bpb,
    train, train_bpb, hellaswag_acc, hellaswag_acc_norm) with hellaswag_n. Every refusal comes before the
    downloads (HellaSwag's file, OpenAI's weights) and the forward passes."""
    cfg = configurator.load(EvalConfig, argv)
    tasks = chosen_tasks(cfg)
    opened = Source.open(cfg.init_from, cfg.out_dir, cfg.checkpoint)
    header, tok = opened.header, opened.tokenizer()
    if "hellaswag" in tasks and tok.kind != "gpt2":
        raise UserError(f"HellaSwag is English text: it needs a model with GPT-2's BPE, not a {tok.kind} tokenizer")
    splits = [split for split in ("train", "val") if split in tasks]
    data_dir, meta = loss_data(cfg, header, tok) if splits else ("", {})
    device = runtime.resolve_device(cfg.device)
    dtype = runtime.resolve_dtype(cfg.dtype, device)
    examples = read_hellaswag(hellaswag_file(cfg.hellaswag))[: cfg.limit or None] if "hellaswag" in tasks else []
    # float32 weights under autocast, the full (padded) vocabulary: the model as train.py evaluates it
    model = opened.model(device, padded=True)
    ctx = runtime.autocast(device, dtype)
    results: dict[str, float] = {}
    if splits:
        evals = eval_batches(cfg, header, data_dir, meta, splits, model.config.block_size)
        results |= report_loss(model, tok, evals, data_dir, device, ctx)
    if examples:
        began = time.perf_counter()
        scores = hellaswag(model, tok, examples, device, ctx, batch_examples=cfg.batch_examples, show=True)
        print(f"HellaSwag: acc {scores['acc']:.4f}, acc_norm {scores['acc_norm']:.4f} over {scores['n']:,} examples "
              f"({time.perf_counter() - began:.1f} s)")
        results |= {f"hellaswag_{k}": v for k, v in scores.items()}
    return results


if __name__ == "__main__":
    process.run(main)
