"""How good the model is: its mean loss per token on the train and val splits, over the same batches at every
evaluation (dataloader.EvalBatches), shared out across the data-parallel processes.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.distributed as dist

from dataloader import EvalBatches
from model import round_up

PROGRESS_S = 10.0  # a long evaluation prints its progress this often


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
    shown = time.perf_counter()
    for split, batches in evals.items():
        total = torch.zeros(3, device=device)  # the sum of the token losses, the number of tokens, their bytes
        n = batches.n_batches
        # every process runs as many forward passes (a sharded model gathers its weights in each, all together):
        # where the batches run out, batch 0 again, not counted
        for k in range(rank, round_up(n, world), world):
            x, y = batches.get(k if k < n else 0, device)
            with ctx, torch.set_grad_enabled(train_graph):
                # the mean over the tokens whose target is not -1
                loss = model(x, y, return_logits=False)[1].detach().float()
            counted = (y != -1).sum() * (k < n)
            text = (byte_counts[y.clamp(min=0)] * (y != -1)).sum() * (k < n) if byte_counts is not None else \
                counted * 0
            total += torch.stack([loss * counted, counted, text])
            if show and time.perf_counter() - shown > PROGRESS_S:  # a long evaluation shows it is alive
                print(f"evaluating the {split} split: batch {k + 1} of {n}", flush=True)
                shown = time.perf_counter()
        if dist.is_initialized():  # over every process, so that all agree (on a checkpoint to save, say): a
            # tensor-parallel group adds its identical sums tp times, and its counts
            dist.all_reduce(total)
        loss_sum, count, text = total.tolist()
        out[split] = loss_sum / count
        if byte_counts is not None:
            out[f"{split}_bpb"] = loss_sum / math.log(2) / text if text else math.nan
    model.train()
    return out
