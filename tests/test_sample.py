"""sample.py: its sampling controls, its continuations
against the reference greedy decoder, batching, stop strings, end-of-text, streaming, and --score; as a script
and in process.

Three tiny models: the shared `trained` char model, one trained longer (so its val loss is well below uniform),
and a GPT-2 BPE model on short multilingual documents ended by <|endoftext|>.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import checkpoint
import sample
import train
from configurator import UserError
from conftest import (CharData, Trained, make_char_dataset, ready_to_decode, reference_tokens, run_main, run_script,
                      tiny_flags, tiny_gpt)
from datafiles import write_meta
from generate import Sampling, generate_tokens
from model import GPT, GPTConfig
from test_tokenizer import DOCS, splits_a_character
from tokenizer import GPT2_EOT, GPT2_META, Tokenizer, gpt2_encoding

DELIMITER = "---------------"
CPU = torch.device("cpu")


def val_ids(data: CharData, n: int) -> list[int]:
    """The first n token ids of the val split."""
    return np.fromfile(data.dir / "val.bin", dtype=np.uint16)[:n].astype(np.int64).tolist()


def record_generate_tokens(monkeypatch: pytest.MonkeyPatch,
                           after_step: Callable[[], None] | None = None) -> list[tuple[tuple[int, ...], list]]:
    """Spy on sample.py's generate_tokens: each call appends (idx.shape, [tokens yielded, (B,) lists]); the real
    function does the work. after_step runs after each yielded token has been consumed by the caller."""
    calls: list[tuple[tuple[int, ...], list]] = []

    def spy(model: GPT, idx: torch.Tensor, *args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        steps: list = []
        calls.append((tuple(idx.shape), steps))
        for next_id in generate_tokens(model, idx, *args, **kwargs):
            steps.append(next_id.tolist())
            yield next_id
            if after_step is not None:
                after_step()

    monkeypatch.setattr(sample, "generate_tokens", spy)
    return calls


# --- sampling controls and continuations --------------------------------------------------------------------------


def test_controls_are_the_settings_sampling():
    cfg = sample.SampleConfig(temperature=0.5, top_k=3, top_p=0.9, repetition_penalty=1.2)
    assert sample.controls(cfg, 62) == Sampling(0.5, 3, 0.9, 1.2)
    assert sample.controls(sample.SampleConfig(), 62) == Sampling(0.8, None, 1.0, 1.0)  # the defaults
    assert sample.controls(sample.SampleConfig(top_k=62), 62).top_k == 62  # the whole vocabulary


def test_a_top_k_beyond_the_vocabulary_keeps_all_of_it_with_a_note(capsys: pytest.CaptureFixture[str]):
    assert sample.controls(sample.SampleConfig(top_k=200), 62).top_k is None  # nanoGPT's habit on a char model
    assert capsys.readouterr().err == ("note: top_k=200 is more than the vocabulary's 62 tokens: keeping all of "
                                       "them\n")


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_samples": 0}, "num_samples and max_new_tokens must be at least 1"),
    ({"max_new_tokens": 0}, "num_samples and max_new_tokens must be at least 1"),
    ({"top_k": 0}, "top_k must be at least 1 (or None), got 0"),
    ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),  # Sampling's own check, as a user error
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
])
def test_controls_refuse_settings_out_of_range(settings: dict[str, Any], message: str):
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        sample.controls(sample.SampleConfig(**settings), 62)


def test_greedy_continuations_are_the_reference_decoder_s(trained: Trained, capsys: pytest.CaptureFixture[str]):
    model, tok = ready_to_decode(str(trained.out_dir))
    ids = tok.encode("ROMEO:")
    expected = reference_tokens(model, torch.tensor([ids]), 40)[0, len(ids):].tolist()  # past block_size 32
    cfg = sample.SampleConfig(num_samples=3, max_new_tokens=40, temperature=0.0, stream=False)
    assert sample.continuations(model, tok, cfg, ids, CPU) == [tok.decode(expected)] * 3  # without the prompt
    cfg.kv_cache = False
    assert sample.continuations(model, tok, cfg, ids, CPU) == [tok.decode(expected)] * 3
    assert capsys.readouterr().out == ""  # whole samples are main's to print
    cfg = sample.SampleConfig(num_samples=1, max_new_tokens=40, temperature=0.0, stream=True)
    assert sample.continuations(model, tok, cfg, ids, CPU) == [tok.decode(expected)]
    assert capsys.readouterr().out == tok.decode(expected) + "\n"  # streamed: one sample, as it grows


# --- sample.py in process and as a script ---------------------------------------------------------------------------


@pytest.mark.slow
def test_script_prints_num_samples_starting_with_the_prompt(trained: Trained):
    rc, out, err = run_script("sample.py", [f"--out_dir={trained.out_dir}", "--start=ROMEO:", "--num_samples=3",
                                            "--max_new_tokens=20", "--device=cpu"])
    assert rc == 0, err
    assert out.endswith(f"\n{DELIMITER}\n")
    samples = out[: -len(f"\n{DELIMITER}\n")].split(f"\n{DELIMITER}\n")
    assert len(samples) == 3
    assert all(s.startswith("ROMEO:") for s in samples)
    assert all(len(s) == len("ROMEO:") + 20 for s in samples)


def test_samples_use_only_the_vocabulary(trained: Trained):
    samples = sample.main([f"--out_dir={trained.out_dir}", "--start=First", "--num_samples=4",
                           "--max_new_tokens=50", "--device=cpu", "--temperature=1.5", "--top_k=None"])
    assert len(samples) == 4
    assert all(len(s) == len("First") + 50 for s in samples)
    assert set("".join(samples)) <= set(trained.data.meta["chars"])


def test_prompt_from_file(trained: Trained, tmp_path: Path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("All:\nSpeak, speak.\n", encoding="utf-8")
    samples = sample.main([f"--out_dir={trained.out_dir}", f"--start=FILE:{prompt}", "--num_samples=2",
                           "--max_new_tokens=10", "--device=cpu"])
    assert [s[: len("All:\nSpeak, speak.\n")] for s in samples] == ["All:\nSpeak, speak.\n"] * 2


def test_same_seed_same_samples(trained: Trained):
    args = [f"--out_dir={trained.out_dir}", "--start=A", "--num_samples=2", "--max_new_tokens=30", "--device=cpu"]
    first, again, other = sample.main(args), sample.main(args), sample.main([*args, "--seed=7"])
    assert first == again
    assert first != other


def test_greedy_samples_are_the_reference_decoder_s(trained: Trained):
    samples = sample.main([f"--out_dir={trained.out_dir}", "--start=The", "--num_samples=2", "--max_new_tokens=40",
                           "--device=cpu", "--temperature=0"])
    ckpt = checkpoint.read(str(trained.out_dir), which="best")  # what sample.py reads, built here by hand
    tok = Tokenizer(ckpt.header.meta)
    model = ckpt.build_model().eval()
    model.crop_vocab(tok.vocab_size)
    expected = reference_tokens(model, torch.tensor([tok.encode("The")]), 40)[0]  # past block_size 32
    assert samples == [tok.decode(expected.tolist())] * 2


def test_num_samples_are_generated_as_one_batch(trained: Trained, monkeypatch: pytest.MonkeyPatch):
    calls = record_generate_tokens(monkeypatch)
    samples = sample.main([f"--out_dir={trained.out_dir}", "--start=ROMEO:", "--num_samples=5",
                           "--max_new_tokens=8", "--device=cpu"])
    assert len(samples) == 5
    assert [shape for shape, _ in calls] == [(5, len("ROMEO:"))]
    assert len(calls[0][1]) == 8


def test_kv_cache_flag_does_not_change_the_samples(trained: Trained):
    args = [f"--out_dir={trained.out_dir}", "--start=MENENIUS:", "--num_samples=3", "--max_new_tokens=50",
            "--device=cpu", "--temperature=1.0", "--top_p=0.9", "--repetition_penalty=1.2"]
    assert sample.main(args) == sample.main([*args, "--kv_cache=False"])


def cut_at_stops(text: str, stops: list[str]) -> str:
    cuts = [text.find(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text


def escape(stop: str) -> str:
    """A stop string as the --stop flag spells it."""
    return stop.replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\x7c")


def test_stop_strings_cut_the_samples_and_are_not_printed(trained: Trained, capsys: pytest.CaptureFixture[str]):
    args = [f"--out_dir={trained.out_dir}", "--start=ROMEO:", "--num_samples=6", "--max_new_tokens=60",
            "--device=cpu", "--temperature=1.0", "--seed=3"]
    free = [s[len("ROMEO:"):] for s in sample.main(args)]
    stops = ["\n", free[0][30:33]]  # a newline (spelled \n on the command line) and a string sample 0 contains
    capsys.readouterr()
    cut = sample.main([*args, "--stop=" + "|".join(map(escape, stops))])
    expected = [cut_at_stops(text, stops) for text in free]
    assert cut == ["ROMEO:" + text for text in expected]
    assert sum(len(e) < len(f) for e, f in zip(expected, free)) >= 2
    assert capsys.readouterr().out == "".join(f"ROMEO:{text}\n{DELIMITER}\n" for text in expected)


def test_stop_string_while_streaming(trained: Trained, capsys: pytest.CaptureFixture[str]):
    args = [f"--out_dir={trained.out_dir}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=80",
            "--device=cpu", "--temperature=1.0", "--seed=4"]
    free = sample.main([*args, "--stream=False"])[0][len("ROMEO:"):]
    stops = [free[40:44], "no such string anywhere"]  # the longest stop string sets how much streaming holds back
    capsys.readouterr()
    cut = sample.main([*args, "--stream=True", "--stop=" + "|".join(map(escape, stops))])
    assert cut == ["ROMEO:" + cut_at_stops(free, stops)]
    assert len(cut[0]) <= len("ROMEO:") + 40
    assert capsys.readouterr().out == cut[0] + "\n"


@pytest.mark.parametrize("stop", ["é", "🙂", "\\u00e9"])
def test_non_ascii_stop_strings(stop: str):
    # a random char model over a 5-character vocabulary writes every character many times in 100 tokens
    chars = "ab\né🙂"
    tok = Tokenizer({"tokenizer": "char", "vocab_size": len(chars), "dtype": "uint16", "eot_id": None,
                     "chars": chars})
    model = tiny_gpt(vocab_size=len(chars))
    cfg = sample.SampleConfig(num_samples=4, max_new_tokens=100, temperature=1.0, stream=False)
    torch.manual_seed(0)
    free = sample.continuations(model, tok, cfg, [0], CPU)
    cfg.stop = stop
    torch.manual_seed(0)
    cut = sample.continuations(model, tok, cfg, [0], CPU)
    meant = "é" if stop == "\\u00e9" else stop
    assert all(meant in text for text in free)
    assert cut == [text[: text.find(meant)] for text in free]




# GPT-2 BPE: test_tokenizer's short documents in several scripts, each ended by <|endoftext|>


@dataclass
class BPERun:
    out_dir: Path
    tok: Tokenizer


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory) -> BPERun:
    """A tiny GPT-2 BPE model that has learnt to end its documents with <|endoftext|> (12 iterations)."""
    root = tmp_path_factory.mktemp("bpe")
    enc = gpt2_encoding()
    order = np.random.default_rng(0).integers(0, len(DOCS), 400)
    ids = np.array([t for k in order for t in [*enc.encode(DOCS[k]), GPT2_EOT]], dtype=np.uint16)
    data = CharData(root / "data", "tiny_gpt2", {**GPT2_META, "source": "test_generate.DOCS"})
    data.dir.mkdir(parents=True)
    n = int(0.9 * len(ids))
    ids[:n].tofile(data.dir / "train.bin")
    ids[n:].tofile(data.dir / "val.bin")
    write_meta(str(data.dir), data.meta)
    out_dir = root / "out"
    train.main(tiny_flags(data, out_dir, max_iters=12, batch_size=4, n_embd=16, learning_rate=3e-2,
                          eval_iters=1))  # vocab 50257 padded to 50304
    header = checkpoint.read(str(out_dir)).header
    assert header.model_args["vocab_size"] == 50304
    return BPERun(out_dir, Tokenizer(header.meta))


def test_samples_stop_at_end_of_text(bpe_run: BPERun, monkeypatch: pytest.MonkeyPatch):
    calls = record_generate_tokens(monkeypatch)
    args = [f"--out_dir={bpe_run.out_dir}", "--start=Café", "--num_samples=4", "--max_new_tokens=60",
            "--device=cpu", "--temperature=1.0", "--stream=False"]
    stopped = sample.main(args)
    free = sample.main([*args, "--stop_at_eot=False"])
    assert [s for s in stopped if "<|endoftext|>" in s] == []
    steps = calls[0][1]  # (steps, 4): every row reached end-of-text, so generation halted before 60 tokens
    assert len(steps) < 60
    assert steps[-1] == [GPT2_EOT] * 4
    for text, rows in zip(stopped, zip(*steps)):
        assert text.rstrip("\ufffd") == "Café" + bpe_run.tok.decode(list(rows[: rows.index(GPT2_EOT)])).rstrip("\ufffd")
    # the same draws without stopping: each free sample runs on past its first <|endoftext|>
    assert all(f.count("<|endoftext|>") >= 1 for f in free)
    assert [f.split("<|endoftext|>")[0].rstrip("\ufffd") for f in free] == [s.rstrip("\ufffd") for s in stopped]





def test_streaming_prints_the_sample_as_it_grows(bpe_run: BPERun, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]):
    chunks: list[str] = []
    calls = record_generate_tokens(monkeypatch, after_step=lambda: chunks.append(capsys.readouterr().out))
    prompt = "Café 🙂"
    text = sample.main([f"--out_dir={bpe_run.out_dir}", f"--start={prompt}", "--num_samples=1",
                        "--max_new_tokens=50", "--device=cpu", "--temperature=1.0", "--stop_at_eot=False",
                        "--stream=True", "--seed=1"])[0]
    chunks.append(capsys.readouterr().out)
    assert "".join(chunks) == text + "\n"
    assert chunks[0].startswith(prompt)
    assert sum(1 for c in chunks if c) > 10  # printed step by step, not all at the end
    ids = [row[0] for row in calls[0][1]]
    assert text == prompt + bpe_run.tok.decode(ids)
    assert any(splits_a_character(bpe_run.tok, t) for t in ids)  # a character arrived in pieces
    assert any(ord(ch) > 127 for ch in text[len(prompt):])


@pytest.mark.slow
def test_script_streaming_prints_what_whole_samples_print(bpe_run: BPERun):
    args = [f"--out_dir={bpe_run.out_dir}", "--start=Grüße 🙂", "--num_samples=1", "--max_new_tokens=40",
            "--device=cpu", "--temperature=1.0", "--seed=2"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        streamed, whole = pool.map(lambda stream: run_script("sample.py", [*args, f"--stream={stream}"]),
                                   [True, False])
    assert streamed[0] == whole[0] == 0, streamed[2] + whole[2]
    assert whole[1].endswith(f"\n{DELIMITER}\n")
    assert streamed[1] == whole[1][: -len(f"{DELIMITER}\n")]
    assert streamed[1].startswith("Grüße 🙂")


# --- scoring -----------------------------------------------------------------------------------------------------

SCORE_LINE = re.compile(r"^(\d+) tokens scored: total loss ([\d.]+) nats, mean loss ([\d.]+), perplexity ([\d.]+)$")


def test_score_prints_token_losses_total_mean_and_perplexity(trained: Trained, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]):
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    base = [f"--out_dir={trained.out_dir}", "--device=cpu"]
    result = sample.main([*base, f"--score={text}"])
    out = capsys.readouterr().out
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    assert sample.main([*base, f"--score=FILE:{tmp_path / 'text.txt'}"]) == result
    assert capsys.readouterr().out == out

    *token_lines, summary = out.splitlines()
    model, tok = ready_to_decode(str(trained.out_dir))
    losses = sample.token_losses(model, tok.encode(text), CPU).tolist()
    assert len(token_lines) == len(losses) == len(text) - 1
    for line, ch, loss in zip(token_lines, text[1:], losses):
        assert line == f"{ch!r}\t{loss:.4f}"
    count, total, mean, perplexity = SCORE_LINE.match(summary).groups()
    assert int(count) == len(text) - 1
    assert float(total) == pytest.approx(sum(losses), abs=1e-3)
    assert float(mean) == pytest.approx(sum(losses) / len(losses), abs=1e-4)
    assert float(perplexity) == pytest.approx(math.exp(float(mean)), rel=1e-3)
    assert result == [f"{sum(losses) / len(losses):.6f}"]


@pytest.fixture(scope="module")
def longer_trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tiny char model trained for 150 iterations: its val loss (~2.9) is well below uniform (4.1)."""
    root = tmp_path_factory.mktemp("longer")
    data = make_char_dataset(root / "data")
    flags = tiny_flags(data, root / "out", max_iters=150, eval_interval=1000)
    return Trained(data, root / "out", train.main(flags), flags)


def test_score_of_the_val_text_agrees_with_the_val_loss(longer_trained: Trained, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]):
    run = longer_trained
    history = train.main([*run.flags, "--init_from=resume", "--eval_only=True", "--eval_iters=200"])
    val_loss = history["eval"][-1][2]  # 200 batches of random windows of the val split
    assert val_loss < 0.75 * math.log(run.data.meta["vocab_size"])
    val = np.fromfile(run.data.dir / "val.bin", dtype=np.uint16)
    (tmp_path / "val.txt").write_text("".join(run.data.meta["chars"][i] for i in val), encoding="utf-8")
    mean = float(sample.main([f"--out_dir={run.out_dir}", "--device=cpu", f"--score=FILE:{tmp_path / 'val.txt'}"])[0])
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith(f"{len(val) - 1} tokens scored")
    assert mean == pytest.approx(val_loss, rel=0.03)


def test_token_losses_past_block_size(trained: Trained):
    model, _ = ready_to_decode(str(trained.out_dir))
    block = model.config.block_size
    ids = val_ids(trained.data, 100)
    losses = sample.token_losses(model, ids, CPU)
    assert losses.shape == (99,)
    first_window = sample.token_losses(model, ids[: block + 1], CPU)
    assert first_window.shape == (block,)
    assert torch.equal(losses[:block], first_window)
    with torch.no_grad():  # the first window by hand
        logits = model(torch.tensor([ids[:block]]))[0][0]
    torch.testing.assert_close(first_window, F.cross_entropy(logits, torch.tensor(ids[1 : block + 1]),
                                                             reduction="none"))
    # every later token is scored with a context of between half a block and a whole block
    data = torch.tensor(ids)
    with torch.no_grad():
        for j in range(block + 1, 100, 5):
            candidates = [F.cross_entropy(model(data[None, j - c : j])[0][0, -1], data[j]).item()
                          for c in range(block // 2, block + 1)]
            assert min(abs(losses[j - 1].item() - c) for c in candidates) < 1e-5


class CountingGPT(GPT):
    """A GPT that counts its forward passes and refuses to run more than `limit` of them."""

    limit = 100
    calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError(f"more than {self.limit} forward passes")
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize("block_size", [1, 2, 3, 8])
def test_token_losses_with_small_blocks(block_size: int):
    torch.manual_seed(0)
    model = CountingGPT(GPTConfig(block_size=block_size, vocab_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    ids = torch.randint(0, 16, (30,), generator=torch.Generator().manual_seed(0)).tolist()
    losses = sample.token_losses(model, ids, CPU)
    assert losses.shape == (29,)
    if block_size == 1:  # a bigram model: every token scored given the one before it
        with torch.no_grad():
            expected = [F.cross_entropy(model(torch.tensor([[a]]))[0][0, -1], torch.tensor(b)).item()
                        for a, b in itertools.pairwise(ids)]
        torch.testing.assert_close(losses, torch.tensor(expected))


def test_with_no_out_dir_the_folders_holding_checkpoints_are_listed_newest_first():
    # the working directory (a temporary one) as a user's repo after several runs: seven out_dirs written in an
    # order other than their names' (one holds a best.pt only), and a folder without checkpoints
    order = [2, 6, 0, 4, 1, 5, 3]  # out-2 written first, out-3 last
    for when, i in enumerate(order):
        path = Path(f"out-{i}", "best.pt" if i == 4 else "ckpt.pt")
        path.parent.mkdir()
        path.write_bytes(b"")
        os.utime(path, (1e9 + when * 60, 1e9 + when * 60))
    Path("data").mkdir()
    code, _, err = run_main("sample.py", ["--device=cpu"])
    assert code == 2
    assert err.strip().splitlines() == [
        "error: no checkpoint at out/ckpt.pt: train one first (init_from=scratch) or set out_dir (checkpoints here "
        "are in: out-3, out-5, out-1, out-4, out-0 and 2 more)"]
