"""evaluate.py: the loss is the mean token loss of each split's evaluation batches, computed alike through the
training graph, shared out across data-parallel ranks without counting a batch twice, and a long evaluation says
it is alive; bits per byte divide by each token id's UTF-8 bytes. The command reports a checkpoint's loss and bits
per byte on its own data as train.py does, and refuses in one line what it cannot measure (HellaSwag for a char
model, data of another vocabulary)."""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import evaluate
import hf
from conftest import TINY_MODEL, Trained, make_char_dataset, run_main, shakespeare_text, tiny_gpt
from datafiles import write_dataset
from dataloader import EvalBatches
from model import GPT
from tokenizer import GPT2_META, Tokenizer

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


def test_bytes_per_token_are_each_ids_utf8_bytes_on_the_device_and_none_without_a_tokenizer():
    chars = "a\u00e9\u20ac\U0001f600"  # 1, 2, 3 and 4 bytes in UTF-8
    tok = Tokenizer({"tokenizer": "char", "vocab_size": 4, "dtype": "uint16", "eot_id": None, "chars": chars})
    counts = evaluate.bytes_per_token(tok, 6, CPU)  # a padded vocabulary: ids 4 and 5 stand for no text
    assert counts.device == CPU and counts.tolist() == [len(ch.encode("utf-8")) for ch in chars] + [0, 0]
    assert evaluate.bytes_per_token(None, 6, CPU) is None


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


# ----------------------------------------------------------------------------------------------------------------
# the command


def test_the_command_reports_what_train_py_reports_for_the_same_checkpoint(trained: Trained, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]):
    # the oracle: train.py's own evaluation of the checkpoint (resume, eval_only), on a copy of it; the defaults
    # read the data, eval_iters and batch_size the checkpoint's run used
    import train  # here: a broken train.py must not stop this file loading

    out_dir = tmp_path / "out"
    shutil.copytree(trained.out_dir, out_dir)
    history = train.main([*trained.flags, f"--out_dir={out_dir}", "--init_from=resume", "--eval_only=True"])
    ((_, train_loss, val_loss),) = history["eval"]
    (val_bpb,) = re.findall(r"^step 12: .*, val bpb ([\d.]+)", capsys.readouterr().out, re.M)
    result = evaluate.main([f"--out_dir={out_dir}", "--checkpoint=latest", "--tasks=train,val", "--device=cpu"])
    assert result["val"] == pytest.approx(val_loss, rel=1e-6)
    assert result["train"] == pytest.approx(train_loss, rel=1e-6)
    assert f"{result['val_bpb']:.4f}" == val_bpb
    where = f"(2 batches of 8 x 32 tokens) on {trained.data.dir}"  # eval_iters=2, batch_size=8, block_size=32
    assert capsys.readouterr().out.splitlines() == [
        f"train loss {result['train']:.4f}, {result['train_bpb']:.4f} bits per byte {where}",
        f"val loss {result['val']:.4f}, {result['val_bpb']:.4f} bits per byte {where}"]


def test_bits_per_byte_is_the_loss_in_bits_times_tokens_over_bytes(tmp_path: Path):
    # characters of 1 to 3 bytes in UTF-8, so that bytes and tokens differ; the whole val split in batches of 3
    # (the last one filled out); the data named by flags, as the checkpoint records none
    text = shakespeare_text().replace("e", "é").replace("-", "—")
    data = make_char_dataset(tmp_path / "data", "accents", text)
    args = {"vocab_size": 64} | TINY_MODEL
    header = checkpoint.Header(model_args=args, iter_num=0, meta=data.meta)
    checkpoint.save(checkpoint.Checkpoint("", header, tiny_gpt().state_dict()), str(tmp_path / "out"))
    result = evaluate.main([f"--out_dir={tmp_path / 'out'}", f"--data_root={data.root}", f"--dataset={data.name}",
                            "--eval_iters=1000", "--batch_size=3", "--device=cpu"])
    assert set(result) == {"val", "val_bpb"}  # by default, the val split alone
    T = args["block_size"]
    val = torch.from_numpy(np.fromfile(data.dir / "val.bin", dtype=np.uint16).astype(np.int64))
    n = (len(val) - 1) // T
    assert n % 3  # the padding rows are exercised
    x, y = val[:n * T].view(n, T), val[1:n * T + 1].view(n, T)
    with torch.no_grad():
        loss = F.cross_entropy(tiny_gpt()(x, y)[0].flatten(0, 1), y.flatten()).item()
    text_bytes = sum(len(data.meta["chars"][i].encode("utf-8")) for i in y.flatten().tolist())
    assert text_bytes > y.numel()
    assert result["val"] == pytest.approx(loss, rel=1e-5)
    assert result["val_bpb"] == pytest.approx(loss / math.log(2) * y.numel() / text_bytes, rel=1e-5)


def test_a_char_model_asked_for_hellaswag_is_refused_before_any_download(trained: Trained, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # no data/hellaswag/ here: the default file would be downloaded

    def no_network(*args: object, **kwargs: object) -> None:
        pytest.fail("the network was touched")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    code, out, err = run_main(evaluate, [f"--out_dir={trained.out_dir}", "--tasks=val,hellaswag", "--device=cpu"])
    assert (code, out, err) == (2, "", "error: HellaSwag is English text: it needs a model with GPT-2's BPE, not a "
                                       "char tokenizer\n")
    assert list(tmp_path.iterdir()) == []


def other_characters(root: Path) -> tuple[Path, str]:
    """As many characters as the trained model's, one of them another: the same ids, other text."""
    data = make_char_dataset(root, "other", shakespeare_text().replace("z", "Z"))
    return data.dir, f"the model was trained on 62 characters, {data.dir} has another vocabulary (62 characters): " \
                     "evaluate it on data prepared with its characters"


def bpe_tokens(root: Path) -> tuple[Path, str]:
    ids = np.arange(1000, dtype=np.uint16)
    write_dataset(str(root / "bpe"), {"train": ids, "val": ids}, GPT2_META)
    return root / "bpe", f"the model was trained on char tokens, {root / 'bpe'} has gpt2 tokens: evaluate it on " \
                         "data with its tokenizer"


@pytest.mark.parametrize("make", [other_characters, bpe_tokens])
def test_data_of_another_vocabulary_is_refused_in_one_line(trained: Trained, tmp_path: Path,
                                                           make: Callable[[Path], tuple[Path, str]]):
    data_dir, message = make(tmp_path / "data")
    code, out, err = run_main(evaluate, [f"--out_dir={trained.out_dir}", f"--data_root={data_dir.parent}",
                                         f"--dataset={data_dir.name}", "--device=cpu"])
    assert (code, out, err) == (2, "", f"error: {message}\n")


def test_openai_weights_have_no_data_of_their_own(monkeypatch: pytest.MonkeyPatch):
    # refused before their download
    monkeypatch.setattr(hf, "pretrained", lambda *args, **kwargs: pytest.fail("the weights were downloaded"))
    code, _, err = run_main(evaluate, ["--init_from=gpt2"])
    assert (code, err) == (2, "error: init_from=gpt2 names no dataset of its own: name one to measure its loss on "
                              "(--dataset=NAME, --data_root=DIR), or score HellaSwag alone (--tasks=hellaswag)\n")


@pytest.mark.parametrize(("flags", "message"), [
    (["--tasks=val,hellaswg"], "unknown task 'hellaswg' in tasks=val,hellaswg (one or more of val, train, "
                               "hellaswag)"),
    (["--tasks=val", "--hellaswag=h.jsonl"], "hellaswag=h.jsonl names a file to score, but tasks=val leaves "
                                             "hellaswag out: add it to tasks, or drop hellaswag"),
    (["--eval_iters=0"], "eval_iters must be at least 1 (or None: the run's own), got 0"),
])
def test_settings_that_measure_nothing_are_refused_in_one_line(flags: list[str], message: str):
    assert run_main(evaluate, flags) == (2, "", f"error: {message}\n")
