"""evaluate.py: the loss is the mean token loss of each split's evaluation batches, computed alike through the
training graph, shared out across data-parallel ranks without counting a batch twice, and a long evaluation says
it is alive."""

from __future__ import annotations

import contextlib
import sys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import evaluate
from conftest import Trained
from dataloader import EvalBatches
from model import GPT

CPU = torch.device("cpu")


def trained_model(trained: Trained) -> tuple[GPT, int, int]:
    """The trained run's model, its block size and (padded) vocabulary."""
    ckpt = checkpoint.read(str(trained.out_dir))
    args = ckpt.header.model_args
    return ckpt.build_model(), args["block_size"], args["vocab_size"]


def eval_batches(trained: Trained, T: int, batch_size: int, vocab: int, max_batches: int) -> dict[str, EvalBatches]:
    return {split: EvalBatches(str(trained.data.dir / f"{split}.bin"), "uint16", T, batch_size, vocab, max_batches)
            for split in ("train", "val")}


def test_estimate_loss_is_the_mean_token_loss_of_the_whole_split(trained: Trained):
    model, T, vocab = trained_model(trained)
    evals = eval_batches(trained, T, 3, vocab, 1000)  # 3 rows a batch: the last batch is filled out
    losses = evaluate.estimate_loss(model, evals, CPU, contextlib.nullcontext())
    val = torch.from_numpy(np.fromfile(trained.data.dir / "val.bin", dtype=np.uint16).astype(np.int64))
    n = (len(val) - 1) // T
    assert n % 3  # the padding rows are exercised
    x, y = val[:n * T].view(n, T), val[1:n * T + 1].view(n, T)
    with torch.no_grad():
        logits = model.eval()(x, y)[0]
    exact = F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    assert losses["val"] == pytest.approx(exact, rel=1e-5)


def test_bits_per_byte_is_the_summed_loss_in_bits_over_the_bytes_of_the_targets(trained: Trained):
    model, T, vocab = trained_model(trained)
    evals = eval_batches(trained, T, 3, vocab, 1000)
    # a made-up byte count per token id (as if some characters took 2 to 4 bytes in UTF-8), 0 for the last id
    counts = torch.tensor([1 + i % 4 for i in range(vocab - 1)] + [0])
    losses = evaluate.estimate_loss(model, evals, CPU, contextlib.nullcontext(), byte_counts=counts)
    val = torch.from_numpy(np.fromfile(trained.data.dir / "val.bin", dtype=np.uint16).astype(np.int64))
    n = (len(val) - 1) // T
    x, y = val[:n * T].view(n, T), val[1:n * T + 1].view(n, T)
    with torch.no_grad():
        nats = F.cross_entropy(model.eval()(x, y)[0].flatten(0, 1), y.flatten(), reduction="sum").item()
    text_bytes = sum(1 + i % 4 if i < vocab - 1 else 0 for i in y.flatten().tolist())
    assert losses["val_bpb"] == pytest.approx(nats / math.log(2) / text_bytes, rel=1e-5)
    assert set(evaluate.estimate_loss(model, evals, CPU, contextlib.nullcontext())) == {"train", "val"}


def test_a_model_evaluated_through_its_training_graph_gives_the_same_losses_and_leaves_nothing(trained: Trained):
    # train_graph (a compiled model without dropout): the same losses as in eval mode without gradients, and nothing
    # left behind: no gradients, train mode after
    model, T, vocab = trained_model(trained)
    evals = eval_batches(trained, T, 8, vocab, 2)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append((module.training, torch.is_grad_enabled())))
    losses = {}
    for train_graph in (False, True):
        losses[train_graph] = evaluate.estimate_loss(model, evals, CPU, contextlib.nullcontext(),
                                                     train_graph=train_graph)
        assert model.training
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert set(seen) == {(False, False), (True, True)}  # eval mode without gradients; the training graph's mode
    assert all(p.grad is None for p in model.parameters())


def test_ranks_share_the_batches_and_count_each_once(trained: Trained):
    # 3 val batches over 2 ranks: rank 0 reads 0 and 2, rank 1 reads 1 and then batch 0 again, uncounted (every
    # rank runs as many forward passes). Without a process group each returns its own share's mean.
    model, T, vocab = trained_model(trained)
    val = {"val": EvalBatches(str(trained.data.dir / "val.bin"), "uint16", T, 8, vocab, max_batches=3)}
    assert val["val"].n_batches == 3
    ctx = contextlib.nullcontext()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    shares = []
    for rank in (0, 1):
        calls.clear()
        shares.append(evaluate.estimate_loss(model, val, CPU, ctx, rank=rank, world=2)["val"])
        assert len(calls) == 2

    def batch_loss(k: int) -> tuple[float, int]:  # (sum of the token losses, tokens)
        x, y = val["val"].read(k)
        with torch.no_grad():
            logits = model.eval()(x)[0]
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum").item(), int(
            (y != -1).sum())

    (s0, n0), (s1, n1), (s2, n2) = (batch_loss(k) for k in range(3))
    assert shares[0] == pytest.approx((s0 + s2) / (n0 + n2), rel=1e-5)
    assert shares[1] == pytest.approx(s1 / n1, rel=1e-5)


def test_a_long_evaluation_shows_its_progress_when_asked(trained: Trained, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]):
    model, T, vocab = trained_model(trained)
    evals = eval_batches(trained, T, 8, vocab, 2)
    monkeypatch.setattr(evaluate, "PROGRESS_S", -1.0)  # every batch stands for a long wait
    # no tqdm at all without a terminal: its lock, shared with forked processes, could be left held by a killed one
    monkeypatch.setattr(evaluate, "tqdm", lambda *args, **kwargs: pytest.fail("a tqdm was made"))
    evaluate.estimate_loss(model, evals, CPU, contextlib.nullcontext(), show=True)  # stderr is no terminal: a log
    assert capsys.readouterr().out.splitlines() == [f"evaluating the {split} split: {k} of 2 batches"
                                                    for split in ("train", "val") for k in (1, 2)]
    evaluate.estimate_loss(model, evals, CPU, contextlib.nullcontext())  # show=False: other ranks keep quiet
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_the_progress_is_a_bar_cleared_when_done(trained: Trained, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    model, T, vocab = trained_model(trained)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(evaluate, "BAR_S", 0.0)  # every update drawn
    evaluate.estimate_loss(model, eval_batches(trained, T, 8, vocab, 2), CPU, contextlib.nullcontext(), show=True)
    out, err = capsys.readouterr()
    assert out == ""  # the log keeps only what lasts
    for split in ("train", "val"):
        assert f"evaluating the {split} split:   0%" in err and f"evaluating the {split} split: 100%" in err
    assert "2/2 [" in err
    assert err.endswith("\r")  # the bar cleared from its line (leave=False)
