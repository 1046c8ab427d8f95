"""generate.py: the KV cache against the full-window reference decoder (a trained model, a random one, every
architecture of test_model, and the block and init switches all at once), the window jumps and the cache's spans,
the decode step eager, compiled or refused, the sampling controls (temperature, top_k, top_p, repetition penalty),
the logits' soft cap, and the stop ids; and the samples train.py shows during training (their prompts, the
model's continuations, a random state of their own).

Models are tiny and run on the CPU in float32, where the cached and uncached paths agree token for token.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import generate
from configurator import UserError
from conftest import Trained, ready_to_decode, reference_tokens, tiny_gpt
from generate import GREEDY, Sampling, adjust_logits, clear_cache, generate_tokens, sample_logits, setup_cache
from model import GPT
from test_model import ARCHS, MODERN, build
from tokenizer import GPT2_META, Tokenizer


def random_model(block_size: int = 32, vocab_size: int = 64, seed: int = 0) -> GPT:
    return tiny_gpt(seed, block_size=block_size, vocab_size=vocab_size)


@pytest.fixture(scope="module")
def models(trained: Trained) -> dict[str, GPT]:
    """The shared trained char model (as sample.py loads it: padding rows cropped), a random one, and one model of
    every architecture of test_model (vocabulary 61)."""
    return {"trained": ready_to_decode(str(trained.out_dir))[0], "random": random_model(),
            **{arch: build(arch) for arch in ARCHS if arch != "gpt2"}}


def prompts(trained: Trained, which: str, batch: int, length: int, vocab_size: int = 64) -> torch.Tensor:
    """(batch, length) ids: windows of the val text for the trained model, random ids below vocab_size for others."""
    if which != "trained":
        return torch.randint(0, vocab_size, (batch, length),
                             generator=torch.Generator().manual_seed(batch * 100 + length))
    val = np.fromfile(trained.data.dir / "val.bin", dtype=np.uint16).astype(np.int64)
    return torch.from_numpy(np.stack([val[37 * i : 37 * i + length] for i in range(batch)]))


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
# every case and sampling for the trained and the random model; every other architecture of test_model (the random
# model is GPT-2's) with the window jumping, greedy and with every control
CACHE_RUNS = [*((which, case, sampling) for which in ("trained", "random") for case in CACHE_CASES
                for sampling in SAMPLING),
              *((arch, "batch_past_the_window", sampling) for arch in ARCHS if arch != "gpt2"
                for sampling in ("greedy", "sampled_all_controls"))]


@pytest.mark.parametrize(("which", "case", "sampling"), CACHE_RUNS)
def test_kv_cache_gives_the_same_tokens(models: dict[str, GPT], trained: Trained, which: str, case: str,
                                        sampling: str):
    model = models[which]
    batch, length, new = CACHE_CASES[case]
    idx = prompts(trained, which, batch, length, model.config.vocab_size)
    torch.manual_seed(1234)
    cached = generate.generate(model, idx, new, SAMPLING[sampling])
    assert model.transformer.h[0].attn.kv_cache is not None  # the cached path really ran
    assert cached.shape == (batch, length + new)
    assert torch.equal(cached[:, :length], idx)
    if sampling == "greedy":  # the documented windows run through the plain forward
        expected = reference_tokens(model, idx, new)
    else:  # the same draws through the reference path, which runs those windows
        torch.manual_seed(1234)
        expected = generate.generate(model, idx, new, SAMPLING[sampling], use_cache=False)
    assert torch.equal(cached, expected)


@pytest.mark.parametrize("sampling", ["greedy", "sampled_all_controls"])
def test_kv_cache_gives_the_same_tokens_with_every_block_and_init_switch(trained: Trained, sampling: str):
    # query-key norm, squared ReLU, soft-capped logits and zero-initialised projections over rotary positions,
    # grouped K/V heads, RMSNorm and a banded layer; the weights moved off their init, where every block would be
    # the identity (and the cache never read)
    model = build("gpt2", **MODERN)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    batch, length, new = CACHE_CASES["batch_past_the_window"]
    idx = prompts(trained, "modern", batch, length, model.config.vocab_size)
    torch.manual_seed(1234)
    cached = generate.generate(model, idx, new, SAMPLING[sampling])
    torch.manual_seed(1234)
    assert torch.equal(cached, generate.generate(model, idx, new, SAMPLING[sampling], use_cache=False))
    if sampling == "greedy":
        assert torch.equal(cached, reference_tokens(model, idx, new))


def test_sampling_draws_from_the_soft_capped_logits():
    # generate.py calls lm_head itself (prefill): the cap is in lm_head, so sampling sees it too
    cap = 1.0
    model, uncapped = tiny_gpt(logit_softcap=cap), random_model()  # the same draws: the same weights
    with torch.no_grad():
        for m in (model, uncapped):
            m.lm_head.weight *= 30  # logits well past the cap
        idx = torch.randint(0, 64, (64, 5), generator=torch.Generator().manual_seed(0))
        raw = uncapped.lm_head(uncapped.hidden_states(idx)[:, -1])  # (64, vocab)
    assert raw.abs().max() > 3 * cap
    draws = {}
    for name, logits in (("capped", cap * torch.tanh(raw / cap)), ("raw", raw)):
        torch.manual_seed(0)
        draws[name] = sample_logits(logits, Sampling(temperature=1.0))
    torch.manual_seed(0)
    drawn = generate.generate(model, idx, 1, Sampling(temperature=1.0), use_cache=False)[:, -1]
    assert torch.equal(drawn, draws["capped"])
    assert not torch.equal(drawn, draws["raw"])


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
    # the logits themselves are checked for every architecture in test_model; here the decode step's own sampling
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


@pytest.mark.parametrize(("controls", "message"), [
    ({"temperature": -0.5}, "temperature must be >= 0, got -0.5"),
    ({"top_k": 0}, "top_k must be at least 1 (or None), got 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
])
def test_sampling_refuses_controls_out_of_range(controls: dict[str, float], message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        Sampling(**controls)


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


# --- samples during training -------------------------------------------------------------------------------------

CHARS = "\nabcdefghij"  # 11 ids under a model of 64: ids 11 to 63 are padding rows, no character


def char_tokenizer(chars: str = CHARS) -> Tokenizer:
    return Tokenizer({"tokenizer": "char", "vocab_size": len(chars), "dtype": "uint16", "eot_id": None,
                      "chars": chars})


@pytest.mark.parametrize(("setting", "chars", "expected"), [
    ("", CHARS, ["\n"]),  # a new line
    ("", "xyz", ["x"]),  # no new line among the characters: the first of them
    ("ab|\nc|j", CHARS, ["ab", "\nc", "j"]),
])
def test_sample_prompts_are_the_setting_split_at_bars_else_a_new_line(setting: str, chars: str,
                                                                       expected: list[str]):
    assert generate.sample_prompts(setting, char_tokenizer(chars)) == expected


def test_a_bpe_models_samples_start_a_new_document():
    assert generate.sample_prompts("", Tokenizer(GPT2_META)) == ["<|endoftext|>"]


@pytest.mark.parametrize(("setting", "message"), [
    ("a||b", "sample_prompts: an empty prompt in 'a||b'"),
    ("|a", "sample_prompts: an empty prompt in '|a'"),
    ("ab\u00a7", "characters not in the model's vocabulary: '\u00a7'"),
])
def test_a_prompt_that_cannot_be_encoded_is_refused(setting: str, message: str):
    with pytest.raises(UserError, match=re.escape(message)):
        generate.sample_prompts(setting, char_tokenizer())


@torch.no_grad()
def greedy_text(model: GPT, tok: Tokenizer, prompt: str, n: int) -> str:
    """The oracle: the plain forward's argmax over the tokenizer's ids, n times (no cache; no window jump)."""
    idx = torch.tensor([tok.encode(prompt)])
    for _ in range(n):
        idx = torch.cat((idx, model(idx)[0][:, -1, : tok.vocab_size].argmax(-1, keepdim=True)), dim=1)
    return tok.decode(idx[0, -n:].tolist())


def test_training_samples_are_the_models_continuations_from_a_random_state_of_their_own():
    model = tiny_gpt(dropout=0.1).train()  # in training: dropout on, which a sample must not use
    tok = char_tokenizer()
    prompts = ["ab", "\n"]
    torch.manual_seed(7)
    before = torch.get_rng_state()
    samples = generate.training_samples(model, tok, prompts, torch.device("cpu"), contextlib.nullcontext(), 12, 3)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's draws go on as without samples
    assert model.training and all(block.attn.kv_cache is None for block in model.transformer.h)
    assert [(prompt, list(texts)) for prompt, texts in samples] == [(p, ["greedy", "sampled"]) for p in prompts]
    model.eval()
    assert [texts["greedy"] for _, texts in samples] == [greedy_text(model, tok, p, 12) for p in prompts]
    assert all(len(text) == 12 and set(text) <= set(CHARS) for _, texts in samples for text in texts.values())
    torch.rand(100)  # another state of the caller's: the same samples, a function of the seed alone
    again = generate.training_samples(model, tok, prompts, torch.device("cpu"), contextlib.nullcontext(), 12, 3)
    assert again == samples
    other = generate.training_samples(model, tok, prompts, torch.device("cpu"), contextlib.nullcontext(), 12, 4)
    assert [texts["sampled"] for _, texts in other] != [texts["sampled"] for _, texts in samples]
