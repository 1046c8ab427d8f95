"""evaluate.py's HellaSwag: the file reader on examples in the dataset's own format (tests/fixtures), the scoring
against an independent one written here on transformers' GPT2LMHeadModel, the command, and a training run's
examples, read or refused before it trains."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import evaluate
import hf
import metrics
import train
from conftest import make_char_dataset, run_main, tiny_flags
from datafiles import write_dataset
from model import GPT, GPTConfig
from tokenizer import GPT2_META, Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "hellaswag_sample.jsonl"
CPU = torch.device("cpu")
ARGS = {"block_size": 64, "vocab_size": 50257, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0,
        "bias": True}


def tiny_gpt2() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**ARGS)).eval()


def test_the_reader_takes_the_datasets_own_lines():
    examples = evaluate.read_hellaswag(str(FIXTURE))
    assert [e.label for e in examples] == [2, 0, 1, 3, 0]
    first = json.loads(FIXTURE.read_text(encoding="utf-8").splitlines()[0])
    assert (examples[0].ctx, list(examples[0].endings)) == (first["ctx"], first["endings"])


BAD_FIELDS = "line 2: ctx must be text, endings four texts (none empty) and label 0 to 3"


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "line 2: not a HellaSwag example (JSON with ctx, endings, label)"),
    ('{"ctx": "a", "endings": ["b", "c", "d"], "label": 0}', BAD_FIELDS),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 4}', BAD_FIELDS),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": true}', BAD_FIELDS),  # JSON's true is not 1
    ('{"ctx": "", "endings": ["", "", "", ""], "label": 0}', BAD_FIELDS),  # nothing to score: no free point
    ('{"ctx": "a", "endings": ["b", "", "d", "e"], "label": 0}', BAD_FIELDS),
    ("[" * 100_000 + "]" * 100_000, "line 2: not a HellaSwag example (JSON with ctx, endings, label)"),  # too deep
])
def test_a_line_that_is_not_an_example_is_one_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "h.jsonl"
    path.write_text(FIXTURE.read_text(encoding="utf-8").splitlines()[0] + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(evaluate.UserError, match=f"^{path} {message}$".replace("(", r"\(").replace(")", r"\)")):
        evaluate.read_hellaswag(str(path))


def oracle(theirs: torch.nn.Module, tok: Tokenizer, example: evaluate.HellaSwagExample) -> list[tuple[float, float]]:
    """Each ending's summed and mean loss, one sequence at a time through transformers' model: the context's
    tokens, then the ending's (with the space that joins them), the ending's tokens scored."""
    out = []
    for ending in example.endings:
        context, tail = tok.encode(example.ctx), tok.encode(" " + ending)
        ids = torch.tensor([context + tail])
        with torch.no_grad():
            logits = theirs(ids).logits[0]
        losses = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")[len(context) - 1:]
        out.append((losses.sum().item(), losses.mean().item()))
    return out


def test_the_scores_are_what_an_independent_implementation_on_transformers_gives():
    ours = tiny_gpt2()
    theirs = hf.to_hf(ours)
    tok = Tokenizer(GPT2_META)
    examples = evaluate.read_hellaswag(str(FIXTURE))
    rows = [row for e in examples for row in evaluate.ending_rows(tok, e, ours.config.block_size)]
    sums, means = evaluate.ending_losses(ours, rows, CPU, contextlib.nullcontext())  # padded to one batch
    expected = [score for e in examples for score in oracle(theirs, tok, e)]
    torch.testing.assert_close(sums, torch.tensor([s for s, _ in expected]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(means, torch.tensor([m for _, m in expected]), rtol=1e-4, atol=1e-4)
    picks = [(min(range(4), key=lambda i, o=o: o[i][0]), min(range(4), key=lambda i, o=o: o[i][1]))
             for o in (oracle(theirs, tok, e) for e in examples)]
    right = [sum(p[k] == e.label for p, e in zip(picks, examples, strict=True)) for k in (0, 1)]
    for batch in (1, 2, 16):  # however the examples are batched
        result = evaluate.hellaswag(ours, tok, examples, CPU, contextlib.nullcontext(), batch_examples=batch)
        assert result == {"acc": right[0] / 5, "acc_norm": right[1] / 5, "n": 5}


def test_a_context_longer_than_the_window_keeps_its_end():
    tok = Tokenizer(GPT2_META)
    example = evaluate.HellaSwagExample("word " * 100, ("one", "two three", "four", "five six seven"), 0)
    rows = evaluate.ending_rows(tok, example, 64)
    assert [len(seq) for seq, _ in rows] == [65] * 4 and [n for _, n in rows] == [1, 2, 1, 3]
    assert rows[3][0][-3:] == tok.encode(" five six seven")


def gpt2_checkpoint(out_dir: Path) -> Path:
    """A tiny model with GPT-2's BPE saved as a checkpoint that names no dataset (none to measure a loss on)."""
    header = checkpoint.Header(model_args=ARGS, iter_num=0, meta=GPT2_META)
    checkpoint.save(checkpoint.Checkpoint("", header, tiny_gpt2().state_dict()), str(out_dir))
    return out_dir


def test_the_command_scores_a_checkpoint(tmp_path: Path):
    out_dir = gpt2_checkpoint(tmp_path / "out")
    code, out, err = run_main(evaluate, [f"--out_dir={out_dir}", "--tasks=hellaswag", f"--hellaswag={FIXTURE}",
                                         "--limit=4", "--device=cpu"])
    assert code == 0, err
    expected = evaluate.hellaswag(tiny_gpt2(), Tokenizer(GPT2_META), evaluate.read_hellaswag(str(FIXTURE))[:4], CPU,
                                  contextlib.nullcontext())
    assert out.startswith(f"HellaSwag: acc {expected['acc']:.4f}, acc_norm {expected['acc_norm']:.4f} over 4 "
                          "examples (")
    result = evaluate.main([f"--out_dir={out_dir}", "--tasks=hellaswag", f"--hellaswag={FIXTURE}", "--limit=4",
                            "--device=cpu"])
    assert result == {f"hellaswag_{k}": v for k, v in expected.items()}


def test_the_command_refuses_in_one_line(tmp_path: Path):
    out_dir = gpt2_checkpoint(tmp_path / "out")
    code, _, err = run_main(evaluate, [f"--out_dir={out_dir}", "--tasks=hellaswag",
                                       f"--hellaswag={tmp_path / 'none.jsonl'}"])
    assert (code, err) == (2, f"error: no HellaSwag file at {tmp_path / 'none.jsonl'}\n")
    data = make_char_dataset(tmp_path / "data")
    model_args = ARGS | {"vocab_size": data.meta["vocab_size"]}
    torch.manual_seed(0)
    header = checkpoint.Header(model_args=model_args, iter_num=0, meta=data.meta)
    checkpoint.save(checkpoint.Checkpoint("", header, GPT(GPTConfig(**model_args)).state_dict()),
                    str(tmp_path / "char"))
    code, _, err = run_main(evaluate, [f"--out_dir={tmp_path / 'char'}", f"--hellaswag={FIXTURE}", "--device=cpu"])
    assert (code, err) == (2, "error: HellaSwag is English text: it needs a model with GPT-2's BPE, not a char "
                              "tokenizer\n")


def test_a_training_run_scores_hellaswag_at_its_evaluations(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    tok = Tokenizer(GPT2_META)
    ids = np.array(tok.encode(" ".join(e.ctx for e in evaluate.read_hellaswag(str(FIXTURE))) * 20), dtype=np.uint16)
    write_dataset(str(tmp_path / "bpe"), {"train": ids, "val": ids[:300]}, GPT2_META)
    flags = [f"--data_root={tmp_path}", "--dataset=bpe", f"--out_dir={tmp_path / 'out'}", "--device=cpu",
             "--dtype=float32", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32",
             "--batch_size=4", "--gradient_accumulation_steps=1", "--max_iters=4", "--eval_interval=2",
             "--eval_iters=2", "--log_interval=2",
             "--hellaswag_interval=1", f"--hellaswag={FIXTURE}"]
    train.main(flags)
    lines = re.findall(r"^step (\d+): hellaswag acc ([\d.]+), acc_norm ([\d.]+) \(5 examples\)$",
                       capsys.readouterr().out, re.M)
    assert [int(step) for step, *_ in lines] == [2, 4]
    model = checkpoint.read(str(tmp_path / "out"), which="latest").build_model()  # the weights at iter 4
    scores = evaluate.hellaswag(model, tok, evaluate.read_hellaswag(str(FIXTURE)), CPU, contextlib.nullcontext())
    assert lines[1][1:] == (f"{scores['acc']:.4f}", f"{scores['acc_norm']:.4f}")
    row = [r for r in metrics.read(str(tmp_path / "out")) if r["kind"] == "eval"][1]
    assert (row["hellaswag_acc"], row["hellaswag_acc_norm"]) == (scores["acc"], scores["acc_norm"])


def test_a_training_run_refuses_hellaswag_it_cannot_score(tmp_path: Path):
    data = make_char_dataset(tmp_path / "data")
    with pytest.raises(evaluate.UserError, match="needs data tokenized with GPT-2's BPE"):
        train.main(tiny_flags(data, tmp_path / "out", hellaswag_interval=1, hellaswag=str(FIXTURE)))


def test_a_training_run_reads_its_examples_up_front_and_none_without_hellaswag_interval(tmp_path: Path):
    examples = evaluate.hellaswag_for_run(1, str(FIXTURE), Tokenizer(GPT2_META), sharded=False)
    assert examples == evaluate.read_hellaswag(str(FIXTURE))
    assert evaluate.hellaswag_for_run(0, str(tmp_path / "none.jsonl"), None, sharded=True) == []  # nothing read


@pytest.mark.parametrize(("tokenizer", "sharded", "message"), [
    (None, False, "hellaswag_interval: HellaSwag is English text and needs data tokenized with GPT-2's BPE"),
    ("char", False, "hellaswag_interval: HellaSwag is English text and needs data tokenized with GPT-2's BPE"),
    ("gpt2", True, "hellaswag_interval: not with sharded weights (fsdp, tensor_parallel); score the checkpoints "
                   "with python evaluate.py instead"),
])
def test_a_training_run_refuses_examples_it_cannot_score(tmp_path: Path, tokenizer: str | None, sharded: bool,
                                                         message: str):
    meta = {"gpt2": GPT2_META, "char": make_char_dataset(tmp_path / "data").meta}
    tok = Tokenizer(meta[tokenizer]) if tokenizer else None
    with pytest.raises(evaluate.UserError, match=f"^{re.escape(message)}$"):
        evaluate.hellaswag_for_run(1, str(FIXTURE), tok, sharded)
