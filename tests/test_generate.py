"""Generation and scoring: the KV cache against the full-window reference, the sampling controls (temperature,
top_k, top_p, repetition penalty, stop ids), and sample.py's stop strings, end-of-text, streaming and --score.

Models are tiny and run on the CPU in float32, where the cached and uncached paths agree token for token. Two
small models are trained here: a char model trained longer than the shared `trained` one (so its val loss is
well below uniform), and a GPT-2 BPE model on short multilingual documents ended by <|endoftext|>.
"""

from __future__ import annotations

import codecs
import itertools
import math
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
import generate
import sample
import train
from conftest import CharData, Trained, make_char_dataset, reference_tokens, run_script, tiny_flags, tiny_gpt
from generate import GREEDY, Sampling, adjust_logits, clear_cache, generate_tokens, sample_logits, setup_cache
from model import GPT, GPTConfig
from tokenizer import GPT2_EOT, GPT2_META, Tokenizer, gpt2_encoding, write_meta

DELIMITER = "---------------"
CPU = torch.device("cpu")


def random_model(block_size: int = 32, vocab_size: int = 64, seed: int = 0) -> GPT:
    return tiny_gpt(seed, block_size=block_size, vocab_size=vocab_size)


def load_model(out_dir: Path) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a checkpoint, as sample.py loads them (best.pt, padding rows cropped)."""
    ckpt = checkpoint.load(str(out_dir), which="best")
    tok = Tokenizer(ckpt["meta"])
    model = checkpoint.model_from(ckpt).eval()
    model.crop_vocab(tok.vocab_size)
    return model, tok


@pytest.fixture(scope="module")
def models(trained: Trained) -> dict[str, GPT]:
    return {"trained": load_model(trained.out_dir)[0], "random": random_model()}


def prompts(trained: Trained, which: str, batch: int, length: int) -> torch.Tensor:
    """(batch, length) ids: windows of the val text for the trained model, random ids for the random one."""
    if which == "random":
        return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(batch * 100 + length))
    val = np.fromfile(trained.data.dir / "val.bin", dtype=np.uint16).astype(np.int64)
    return torch.from_numpy(np.stack([val[37 * i : 37 * i + length] for i in range(batch)]))


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


# --- KV cache ----------------------------------------------------------------------------------------------------

CACHE_CASES = {  # rows, prompt length, new tokens; block_size is 32
    "one_row": (1, 5, 20),
    "batch_past_the_window": (4, 20, 60),  # the window jumps several times
    "prompt_longer_than_the_window": (3, 40, 30),
    "prompt_fills_the_window": (2, 32, 10),
}
SAMPLING = {
    "greedy": GREEDY,
    "sampled": Sampling(temperature=1.0),
    "sampled_all_controls": Sampling(temperature=0.8, top_k=10, top_p=0.9, repetition_penalty=1.3),
}


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("case", CACHE_CASES)
@pytest.mark.parametrize("which", ["trained", "random"])
def test_kv_cache_gives_the_same_tokens(models: dict[str, GPT], trained: Trained, which: str, case: str,
                                        sampling: str):
    model = models[which]
    batch, length, new = CACHE_CASES[case]
    idx = prompts(trained, which, batch, length)
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(1234)
        outs.append(generate.generate(model, idx, new, SAMPLING[sampling], use_cache=use_cache))
    assert outs[0].shape == (batch, length + new)
    assert torch.equal(outs[0][:, :length], idx)
    assert torch.equal(outs[0], outs[1])
    if sampling == "greedy":  # and both are the documented windows run through the plain forward
        assert torch.equal(outs[0], reference_tokens(model, idx, new))


def test_generation_fills_the_cache_window_by_window(monkeypatch: pytest.MonkeyPatch):
    model = random_model()
    cfg = model.config
    positions: list[int] = []
    real_decode_one = generate.decode_one

    def spy(model: GPT, token: torch.Tensor, input_pos: torch.Tensor, *controls: Any) -> torch.Tensor:
        positions.append(int(input_pos))
        return real_decode_one(model, token, input_pos, *controls)

    monkeypatch.setattr(generate, "decode_one", spy)
    idx = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(0))
    steps = generate_tokens(model, idx, 60, GREEDY)
    next(steps)  # the prompt was prefilled in one pass, and the next token queued: decode_one at position 20
    caches = [block.attn.kv_cache for block in model.transformer.h]
    assert all(c is not None and c.k.shape == c.v.shape == (3, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
               for c in caches)
    kv = [torch.stack((c.k, c.v)) for c in caches]
    assert all(t[:, :, :, :21].abs().sum(-1).gt(0).all() and not t[:, :, :, 21:].any() for t in kv)
    assert positions == [20]
    next(steps)  # one token ahead again: position 21
    assert positions == [20, 21]
    kv = [torch.stack((c.k, c.v)) for c in caches]
    assert all(t[:, :, :, 21].abs().sum(-1).gt(0).all() and not t[:, :, :, 22:].any() for t in kv)
    assert len(list(steps)) == 58
    # window jumps (docstring): when the 33rd token arrives, restart from the last 24 (3/4 block) in one prefill
    assert positions == [*range(20, 32), *[*range(24, 32)] * 5, 24]


def test_cuda_graph_decoding_is_refused_without_cuda_and_moot_without_the_cache():
    # the CUDA graph path itself is checked on a GPU (README: token-identical to this eager path); here its contract
    model = random_model()
    idx = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device, not cpu"):
        generate.generate(model, idx, 3, GREEDY, cuda_graph=True)
    plain = generate.generate(model, idx, 3, GREEDY, use_cache=False)
    assert torch.equal(generate.generate(model, idx, 3, GREEDY, use_cache=False, cuda_graph=True), plain)


def test_a_decode_step_that_fails_to_compile_decodes_eager_with_one_warning(monkeypatch: pytest.MonkeyPatch):
    calls = []

    def broken(cuda: bool) -> Callable[..., torch.Tensor]:
        def step(*args: object) -> torch.Tensor:
            calls.append(1)
            raise RuntimeError("no working C compiler found\nmore detail")
        return step

    monkeypatch.setattr(generate, "compiled_decode_one", broken)
    model = random_model()
    idx = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(4))
    with pytest.warns(UserWarning, match="torch.compile failed, decoding eager: RuntimeError: no working C compiler"):
        out = generate.generate(model, idx, 20, GREEDY, compiled=True)
    assert torch.equal(out, reference_tokens(model, idx, 20))
    assert calls == [1]  # tried once, then eager for the rest


def test_cache_is_kept_for_the_next_generation_and_clear_cache_frees_it():
    model = random_model()
    idx = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(1))
    generate.generate(model, idx, 50)  # leaves every window position of the cache written
    buffers = [block.attn.kv_cache.k for block in model.transformer.h]
    short = idx[:, :3]
    expected = reference_tokens(model, short, 10)
    assert torch.equal(generate.generate(model, short, 10, GREEDY), expected)  # stale entries stay masked
    assert all(b.attn.kv_cache.k is k for b, k in zip(model.transformer.h, buffers, strict=True))  # reused
    generate.generate(model, idx[:1], 5)  # another batch size: a new cache
    assert all(block.attn.kv_cache.k.size(0) == 1 for block in model.transformer.h)
    clear_cache(model)
    assert all(block.attn.kv_cache is None for block in model.transformer.h)
    assert torch.equal(generate.generate(model, short, 10, GREEDY), expected)


def test_abandoned_generation_leaves_a_usable_cache():
    model = random_model()
    idx = torch.randint(0, 64, (2, 25), generator=torch.Generator().manual_seed(2))
    steps = generate_tokens(model, idx, 40)
    for _ in range(20):
        next(steps)
    steps.close()
    for prompt in (idx[:, :4], idx[:, 5:]):
        assert torch.equal(generate.generate(model, prompt, 40, GREEDY), reference_tokens(model, prompt, 40))


def test_cache_made_before_crop_block_size_still_gives_the_reference_tokens():
    model = random_model()
    idx = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    generate.generate(model, idx, 40)
    model.crop_block_size(16)
    assert torch.equal(generate.generate(model, idx, 40, GREEDY), reference_tokens(model, idx, 40))


def test_without_cache_no_cache_is_made_and_decode_one_is_never_called(monkeypatch: pytest.MonkeyPatch):
    model = random_model()
    monkeypatch.setattr(generate, "decode_one", lambda *args: pytest.fail("decode_one called with use_cache=False"))
    steps = generate_tokens(model, torch.zeros(2, 3, dtype=torch.long), 40, use_cache=False)
    assert len([step for step in steps if all(b.attn.kv_cache is None for b in model.transformer.h)]) == 40


def test_decode_reads_a_power_of_two_span_of_the_cache(monkeypatch: pytest.MonkeyPatch):
    # block 300: spans 128, 256, then the whole (non-power-of-two) window, and a jump back to 225 tokens
    model = random_model(block_size=300)
    spans: list[tuple[int, int]] = []
    real_decode_one = generate.decode_one

    def spy(model: GPT, token: torch.Tensor, input_pos: torch.Tensor, *controls: Any) -> torch.Tensor:
        spans.append((int(input_pos), controls[-1]))
        return real_decode_one(model, token, input_pos, *controls)

    monkeypatch.setattr(generate, "decode_one", spy)
    idx = torch.randint(0, 64, (2, 100), generator=torch.Generator().manual_seed(0))
    cached = generate.generate(model, idx, 240, GREEDY)
    assert torch.equal(cached, reference_tokens(model, idx, 240))
    assert all(pos < span for pos, span in spans)  # a span always covers the position it decodes
    assert {span for _, span in spans} == {128, 256, 300}
    assert [s for _, s in spans[:30]] == [128] * 28 + [256] * 2  # positions 100..127, then 128 onwards


@pytest.mark.parametrize("which", ["trained", "random"])
def test_decode_one_on_a_filled_cache_picks_the_full_forward_s_argmax(models: dict[str, GPT], trained: Trained,
                                                                      which: str):
    # the logits themselves are checked for every architecture in test_arch; here the decode step's own sampling
    model = models[which]
    x = prompts(trained, which, 3, 32)  # a whole window
    setup_cache(model, 3)
    try:
        with torch.no_grad():
            full = model(x)[0]  # (3, 32, vocab)
            prefill = generate.prefill(model, x[:, :20], torch.arange(20), GREEDY, None)  # positions 0..19
            assert torch.equal(prefill, full[:, 19].argmax(-1))
            for t in range(20, 32):  # then one token at a time on the filled cache
                greedy = generate.decode_one(model, x[:, t : t + 1], torch.tensor([t]), None, GREEDY, 32)  # (3,)
                assert torch.equal(greedy, full[:, t].argmax(-1))
    finally:
        clear_cache(model)


@pytest.mark.slow
def test_compiled_decode_step_gives_the_reference_tokens():
    # the GPU's default path, compiled here for the CPU (static shapes, one graph per span): grouped K/V heads,
    # rotary positions and a banded layer, past block_size so the window jumps
    model = tiny_gpt(n_head=4, n_kv_head=2, pos_emb="rope", attn_pattern="alternating", window_size=8)
    idx = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(6))
    assert torch.equal(generate.generate(model, idx, 40, GREEDY, compiled=True), reference_tokens(model, idx, 40))


def test_bigram_model_generates():
    # block_size=1 is a bigram model: each token sees only the one before it, with or without the cache
    model = random_model(block_size=1)
    idx = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(0))
    expected = idx
    with torch.no_grad():
        for _ in range(6):
            expected = torch.cat((expected, model(expected[:, -1:])[0][:, -1].argmax(-1, keepdim=True)), dim=1)
    for use_cache in (True, False):
        assert torch.equal(generate.generate(model, idx, 6, GREEDY, use_cache=use_cache), expected)


# --- sampling controls -------------------------------------------------------------------------------------------


def test_temperature_zero_is_argmax_whatever_the_other_controls():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    for top_k, top_p in [(None, 1.0), (5, 1.0), (None, 0.3), (1, 0.1)]:
        assert torch.equal(sample_logits(logits, Sampling(0.0, top_k, top_p)), logits.argmax(-1))


def test_top_k_one_is_argmax():
    logits = torch.randn(256, 50, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    assert torch.equal(sample_logits(logits, Sampling(2.0, top_k=1)), logits.argmax(-1))


def test_generation_with_top_k_one_is_greedy():
    model = random_model()
    idx = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    assert torch.equal(generate.generate(model, idx, 40, Sampling(1.0, top_k=1)), reference_tokens(model, idx, 40))


def test_generation_with_top_k_picks_only_the_top_k():
    model = random_model()
    idx = torch.randint(0, 64, (64, 4), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        top = model(idx)[0][:, -1].topk(3).indices  # (64, 3)
    torch.manual_seed(4)
    picked = generate.generate(model, idx, 1, Sampling(2.0, top_k=3))[:, -1:]  # (64, 1)
    assert (picked == top).any(dim=1).all()
    assert len(set(picked.flatten().tolist())) > 3  # the rows differ, so the picks are not one token


def draw(logits: torch.Tensor, n: int = 4000, **controls: Any) -> torch.Tensor:
    """n draws from one logits row (vocab,) -> counts per token (vocab,)."""
    torch.manual_seed(0)
    ids = sample_logits(logits[None].expand(n, -1), Sampling(**controls))
    return torch.bincount(ids, minlength=logits.numel())


NUCLEUS_PROBS = [0.05, 0.5, 0.15, 0.3]  # by token id; by probability: 1, 3, 2, 0


@pytest.mark.parametrize(("top_p", "nucleus"), [(0.2, {1}), (0.7, {1, 3}), (0.85, {1, 3, 2}), (0.97, {0, 1, 2, 3})])
def test_top_p_draws_only_from_the_nucleus(top_p: float, nucleus: set[int]):
    counts = draw(torch.tensor(NUCLEUS_PROBS).log(), top_p=top_p)
    assert {i for i, c in enumerate(counts.tolist()) if c} == nucleus
    # inside the nucleus, the model's probabilities renormalised
    mass = sum(NUCLEUS_PROBS[i] for i in nucleus)
    assert counts[1].item() / counts.sum().item() == pytest.approx(0.5 / mass, abs=0.03)


@pytest.mark.parametrize(("top_p", "nucleus"), [(0.5, {0}), (0.75, {0, 1})])
def test_top_p_nucleus_that_reaches_top_p_exactly_is_not_extended(top_p: float, nucleus: set[int]):
    # the smallest set whose probability reaches top_p (Holtzman et al.; HF's TopPLogitsWarper): {0} reaches 0.5.
    # The probabilities are powers of two, so the cumulative sums are exact in float32.
    counts = draw(torch.tensor([0.5, 0.25, 0.125, 0.125]).log(), top_p=top_p)
    assert {i for i, c in enumerate(counts.tolist()) if c} == nucleus


def test_top_p_one_leaves_the_distribution_alone():
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    expected = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1).squeeze(-1)
    torch.manual_seed(5)
    assert torch.equal(sample_logits(logits, Sampling(1.0, None, top_p=1.0)), expected)


def sampled_probs(logits: torch.Tensor, seen: torch.Tensor | None = None, **controls: Any) -> torch.Tensor:
    """The probabilities sample_logits draws from: softmax of adjust_logits."""
    return F.softmax(adjust_logits(logits, Sampling(**controls), seen), dim=-1)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens(
        monkeypatch: pytest.MonkeyPatch):
    logits = torch.tensor([[2.0, -1.0, 0.5, -0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False, False]])
    penalized = torch.tensor([[1.0, -2.0, 0.5, -0.5, 3.0]])  # 2.0 / 2, -1.0 * 2, unseen tokens untouched
    probs = sampled_probs(logits, repetition_penalty=2.0, seen=seen)
    torch.testing.assert_close(probs, F.softmax(penalized, dim=-1), rtol=0, atol=0)
    before = F.softmax(logits, dim=-1)
    assert (probs[seen] < before[seen]).all()
    assert (probs[~seen] > before[~seen]).all()
    for off in ({"repetition_penalty": 1.0, "seen": seen}, {"repetition_penalty": 2.0, "seen": None}):
        torch.testing.assert_close(sampled_probs(logits, **off), before, rtol=0, atol=0)


def test_repetition_penalty_can_change_the_greedy_choice():
    logits, seen = torch.tensor([[2.0, 1.5, -1.0]]), torch.tensor([[True, False, False]])
    assert sample_logits(logits, Sampling(0.0, repetition_penalty=1.0), seen).tolist() == [0]
    assert sample_logits(logits, Sampling(0.0, repetition_penalty=2.0), seen).tolist() == [1]


def repeats(rows: torch.Tensor) -> int:
    """How many tokens of the rows (B, T) repeat an earlier token of their row."""
    return sum(len(row) - len(set(row)) for row in rows.tolist())


def test_generation_penalizes_the_prompt_and_its_own_tokens():
    # greedy with a huge penalty: every seen logit that is positive drops to ~0, so a token that was the argmax
    # with a positive logit is not picked again while an unseen positive logit remains
    model = random_model()
    idx = torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(3))
    plain = generate.generate(model, idx, 20, GREEDY)
    penalized = generate.generate(model, idx, 20, Sampling(0.0, repetition_penalty=1e6))
    assert not torch.equal(plain, penalized)
    assert repeats(penalized) < repeats(plain)


def sampled_steps(model: GPT, idx: torch.Tensor, n: int, **kwargs: Any) -> list[list[int]]:
    """The tokens generate_tokens yields at temperature 1 with a fixed seed, as rows (B, steps). Stopped rows take
    their draws like the others, so the draws match a run without stop ids until generation ends."""
    torch.manual_seed(0)
    return torch.stack(list(generate_tokens(model, idx, n, Sampling(temperature=1.0), **kwargs)), dim=1).tolist()


def first_stops(free: list[list[int]], stop_ids: set[int]) -> list[int | None]:
    return [next((t for t, tok in enumerate(row) if tok in stop_ids), None) for row in free]


def expected_with_stops(free: list[list[int]], stop_ids: set[int], n: int) -> list[list[int]]:
    """Each free row up to its first stop id, which then repeats; cut where the last row has stopped."""
    firsts = first_stops(free, stop_ids)
    steps = n if None in firsts else max(firsts) + 1
    return [row[:steps] if f is None else (row[: f + 1] + [row[f]] * n)[:steps] for row, f in zip(free, firsts)]


def test_a_row_that_stopped_repeats_its_stop_id_and_others_go_on():
    model = random_model()
    idx = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(4))
    free = sampled_steps(model, idx, 30)
    stop = free[0][3]
    assert None in first_stops(free, {stop})  # so some row runs to the end, unaffected
    assert sampled_steps(model, idx, 30, stop_ids=(stop,)) == expected_with_stops(free, {stop}, 30)


def test_generation_ends_once_every_row_has_stopped():
    model = random_model()
    idx = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(4))
    free = sampled_steps(model, idx, 30)
    stop_ids = {row[2] for row in free}  # every row has stopped by its third token
    out = sampled_steps(model, idx, 30, stop_ids=tuple(stop_ids))
    assert [len(row) for row in out] == [max(first_stops(free, stop_ids)) + 1] * 3
    assert len(out[0]) <= 3


def test_each_row_repeats_the_stop_id_it_produced():
    # two stop ids: row 0 stops at once on the second one and must keep repeating that one, not the first
    model = random_model()
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(5))
    free = sampled_steps(model, idx, 30)
    stop_ids = (free[1][5], free[0][0])
    assert stop_ids[0] != stop_ids[1]
    assert first_stops(free, set(stop_ids))[1] > 0  # row 1 goes on for a while
    out = sampled_steps(model, idx, 30, stop_ids=stop_ids)
    assert out == expected_with_stops(free, set(stop_ids), 30)
    assert out[0] == [free[0][0]] * len(out[0])


# --- sample.py: batching, stop strings, end-of-text, streaming ----------------------------------------------------


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
    model = random_model(vocab_size=len(chars))
    cfg = sample.SampleConfig(num_samples=4, max_new_tokens=100, temperature=1.0, stream=False)
    torch.manual_seed(0)
    free = sample.generate(model, tok, cfg, [0], CPU)
    cfg.stop = stop
    torch.manual_seed(0)
    cut = sample.generate(model, tok, cfg, [0], CPU)
    meant = "é" if stop == "\\u00e9" else stop
    assert all(meant in text for text in free)
    assert cut == [text[: text.find(meant)] for text in free]


# GPT-2 BPE: short documents in several scripts, each ended by <|endoftext|>; many of their characters take
# several tokens (🌶, 東, 寿, ...)
DOCS = ["Café au lait 🙂 s'il vous plaît.", "Naïve résumé: jalapeño 🌶️ piñata!", "Grüße aus Köln 🙂 und Zürich.",
        "東京で寿司を食べた 🍣.", "Voilà, déjà vu 😀 encore."]


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
    ckpt = checkpoint.load(str(out_dir))
    assert ckpt["model_args"]["vocab_size"] == 50304
    return BPERun(out_dir, Tokenizer(ckpt["meta"]))


def test_generation_stops_at_end_of_text(bpe_run: BPERun, monkeypatch: pytest.MonkeyPatch):
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


def streamed_decode(tok: Tokenizer, ids: list[int]) -> list[str]:
    """The text after each token, decoded as sample.generate does: token bytes through an incremental decoder."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts, text = [], ""
    for token in ids:
        text += decoder.decode(tok.token_bytes(token))
        texts.append(text)
    texts[-1] += decoder.decode(b"", final=True)
    return texts


def splits_a_character(tok: Tokenizer, token: int) -> bool:
    try:
        tok.token_bytes(token).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_incremental_decoding_never_breaks_a_character():
    tok = Tokenizer(GPT2_META)
    split = 0
    for text in [*DOCS, "naïve café — “quotes” 🙂🙃 👩‍👩‍👧 日本語のテキスト 한국어 ελληνικά ₿"]:
        ids = tok.encode(text)
        split += sum(splits_a_character(tok, t) for t in ids)
        texts = streamed_decode(tok, ids)
        assert texts[-1] == tok.decode(ids) == text
        assert all(text.startswith(t) and "\ufffd" not in t for t in texts)  # nothing printed is ever taken back
    assert split > 10  # many tokens hold only part of a character


def test_incremental_decoding_of_arbitrary_tokens_matches_decode():
    # random ids make invalid UTF-8 too: both decoders must replace the same bytes
    tok = Tokenizer(GPT2_META)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = rng.integers(0, tok.vocab_size, 20).tolist()
        assert streamed_decode(tok, ids)[-1] == tok.decode(ids)
    bytes_only = [b for b in range(tok.vocab_size) if len(tok.token_bytes(b)) == 1 and splits_a_character(tok, b)]
    for _ in range(50):
        ids = rng.choice(bytes_only, 12).tolist()
        assert streamed_decode(tok, ids)[-1] == tok.decode(ids)


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
    model, tok = load_model(trained.out_dir)
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


def test_token_losses_past_block_size(models: dict[str, GPT], trained: Trained):
    model = models["trained"]
    block = model.config.block_size
    ids = prompts(trained, "trained", 1, 100)[0].tolist()
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
