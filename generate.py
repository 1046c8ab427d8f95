"""Generation with a KV cache, gpt-fast style: the prompt is prefilled in one pass, then each new token is one
call of a small decode step with static shapes, which torch.compile can turn into one CUDA graph.

    tokens = generate(model, idx, max_new_tokens=100, sampling=Sampling(temperature=0.8, top_k=200))

The sampling controls (temperature, top-k, top-p, repetition penalty) travel together as one frozen Sampling.
use_cache=False is the reference path: the whole window through the model for every token, the same tokens.
Used by sample.py, bench.py and the tests; at its end, the samples train.py shows during training.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

import runtime
from configurator import UserError
from model import GPT, KVCache
from tokenizer import Tokenizer


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn from the logits. Frozen: a compiled decode step specialises on its values."""

    temperature: float = 1.0  # 0: greedy (argmax); below 1 more conservative, above 1 more random
    top_k: int | None = None  # keep only the k likeliest tokens (None: all)
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches top_p (1.0: all)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text (1.0: off)
    vocab: int | None = None  # draw only ids below this: a model in training has padding rows that are no token

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


GREEDY = Sampling(temperature=0.0)


def adjust_logits(logits: torch.Tensor, sampling: Sampling, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The logits (B, vocab) of the distribution to sample from. repetition_penalty > 1 discourages the tokens
    marked in seen (B, vocab), as CTRL does (Keskar et al. 2019): positive logits are divided by it, negative
    ones multiplied. Then temperature (0 leaves the logits for an argmax); top_k keeps the k likeliest tokens;
    top_p the smallest set whose probability reaches top_p (nucleus sampling, Holtzman et al. 2019)."""
    if sampling.vocab is not None:
        logits = logits[..., : sampling.vocab]
        seen = None if seen is None else seen[..., : sampling.vocab]
    penalty = sampling.repetition_penalty
    if penalty != 1.0 and seen is not None:
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalized, logits)
    if sampling.temperature == 0:
        return logits
    logits = logits / sampling.temperature
    if sampling.top_k is not None:
        kth = torch.topk(logits, min(sampling.top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= sampling.top_p  # the tokens before it already reach top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    return logits


def sample_logits(logits: torch.Tensor, sampling: Sampling, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, vocab): a draw from softmax(adjust_logits(...)), or its argmax when
    temperature is 0. The draw is the Gumbel-max trick, argmax(logits + G) with G = -log(E), E ~ Exp(1): one
    pass that compiles into the decode graph, where softmax + torch.multinomial would take several."""
    logits = adjust_logits(logits, sampling, seen)
    if sampling.temperature == 0:
        return argmax_rows(logits)
    return argmax_rows(logits - torch.empty_like(logits).exponential_(1).log())


def argmax_rows(x: torch.Tensor, chunks: int = 64) -> torch.Tensor:
    """torch.argmax(x, dim=-1) for x (B, n), the first maximum included, in two stages: the maximum of each of
    `chunks` slices, then across them. Compiled at batch 1, a one-stage argmax over 50k logits runs in a single
    thread block, a long serial kernel; two stages spread it over many."""
    B, n = x.shape
    x = F.pad(x, (0, -n % chunks), value=float("-inf")).view(B, chunks, -1)
    best, where = x.max(dim=-1)  # (B, chunks): the first maximum of each slice
    chunk = best.argmax(dim=-1, keepdim=True)  # the first slice holding the overall maximum
    return (chunk * x.size(-1) + where.gather(1, chunk))[:, 0]


def setup_cache(model: GPT, batch_size: int) -> None:
    """Give every attention layer a KV cache for batch_size rows and the whole window. A cache that fits is
    kept: the same buffers let a compiled decode step (and its CUDA graph) serve every generation."""
    cfg = model.config
    weight = model.lm_head.weight
    cache = model.transformer.h[0].attn.kv_cache
    if cache is not None and (cache.k.size(0), cache.k.dtype, cache.k.device) == (batch_size, weight.dtype,
                                                                                   weight.device):
        return
    for block in model.transformer.h:
        block.attn.kv_cache = KVCache(batch_size, cfg.kv_heads, cfg.block_size, cfg.head_dim, weight.dtype,
                                      weight.device)


def clear_cache(model: GPT) -> None:
    """Free the KV cache (generation keeps it for the next call)."""
    for block in model.transformer.h:
        block.attn.kv_cache = None


def prefill(model: GPT, window: torch.Tensor, input_pos: torch.Tensor | None, sampling: Sampling,
            seen: torch.Tensor | None) -> torch.Tensor:
    """The whole window (B, T) in one pass -> the next token (B,). With input_pos (T,) its keys and values fill
    the cache; without, nothing is cached (the reference path). lm_head runs on the last position only."""
    last = model.hidden_states(window, input_pos)[:, -1]  # (B, C)
    return sample_logits(model.lm_head(last).float(), sampling, seen)


def decode_one(model: GPT, token: torch.Tensor, input_pos: torch.Tensor, seen: torch.Tensor | None,
               sampling: Sampling, span: int) -> torch.Tensor:
    """One token per row (B, 1) at window position input_pos (1,), attending over the first span cached
    positions -> the next token (B,). Static shapes: compiled, forward and sampling are one graph per span (a
    CUDA graph on a GPU), one launch per step."""
    logits = model(token, input_pos=input_pos, span=span)[0][:, -1]
    return sample_logits(logits.float(), sampling, seen)


class GraphedDecode:
    """decode_one captured by hand as CUDA graphs, one per (span, sampling), and replayed: one launch per token,
    where eager Python launches hundreds of small kernels and the host, not the GPU, sets the pace. A capture is
    one eager step on a side stream (cuBLAS and the allocator set up; it writes the same keys and values the step
    will) and one recorded step: far quicker than compiling. The graph reads fixed buffers,
    so each call copies the token, its position and (with a repetition penalty) the seen-mask in; the KV cache is
    fixed already (setup_cache keeps its buffers). The generator state is put back after a capture, and a replay
    advances it as the eager step would: seeded samples are the eager path's."""

    def __init__(self, model: GPT, batch_size: int) -> None:
        device = model.lm_head.weight.device
        self.model = model
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.seen = torch.zeros(batch_size, model.config.vocab_size, dtype=torch.bool, device=device)
        self.graphs: dict[tuple[int, Sampling], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool: tuple[int, int] | None = None  # the graphs share one memory pool: they never run at once

    def __call__(self, model: GPT, token: torch.Tensor, input_pos: torch.Tensor, seen: torch.Tensor | None,
                 sampling: Sampling, span: int) -> torch.Tensor:
        """As decode_one; the result is the graph's output buffer, overwritten by the next call."""
        self.token.copy_(token)
        self.pos.copy_(input_pos)
        if sampling.repetition_penalty != 1.0 and seen is not None:
            self.seen.copy_(seen)
        if (span, sampling) not in self.graphs:
            self.graphs[span, sampling] = self.capture(sampling, span)
        graph, out = self.graphs[span, sampling]
        graph.replay()
        return out

    def capture(self, sampling: Sampling, span: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        device = self.token.device
        rng = torch.cuda.get_rng_state(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            decode_one(self.model, self.token, self.pos, self.seen, sampling, span)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # on the model's device, whichever is current (sample.py --device=cuda:1 sets none)
        with torch.cuda.device(device), torch.cuda.graph(graph, pool=self.pool, stream=side):
            out = decode_one(self.model, self.token, self.pos, self.seen, sampling, span)
        self.pool = graph.pool()
        torch.cuda.set_rng_state(rng, device)
        return graph, out


@functools.cache
def compiled_decode_one(cuda: bool) -> Callable[..., torch.Tensor]:
    """decode_one compiled with static shapes (a graph per batch size and span). On a GPU: a CUDA graph, autotuned
    matmuls and coordinate-descent-tuned kernels. At batch 1 a step is bound by the latency of its hundred-odd
    small kernels, and the tuning shortens them (bench.py --mode=sample measures it)."""
    options = {"triton.cudagraphs": True, "max_autotune": True, "coordinate_descent_tuning": True} if cuda else None
    return torch.compile(decode_one, fullgraph=True, dynamic=False, options=options)


def decode_step(model: GPT, batch_size: int, compiled: bool, cuda_graph: bool) -> Callable[..., torch.Tensor]:
    """The one-token step generate_tokens calls: decode_one as it is, compiled, or replayed as CUDA graphs."""
    device = model.lm_head.weight.device
    if compiled:
        return eager_if_compile_fails(compiled_decode_one(device.type == "cuda"))
    if cuda_graph:
        if device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device, not {device}")
        return GraphedDecode(model, batch_size)
    return decode_one


def eager_if_compile_fails(compiled: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The compiled step, or decode_one from the call on which compiling it fails (no C compiler, no Triton, an
    unsupported op), with one warning, as training does; running out of memory is not a compiler problem."""
    current = compiled

    def step(*args: object) -> torch.Tensor:
        nonlocal current
        try:
            return current(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # any compiler failure
            if current is decode_one:
                raise
            runtime.warn_compile_failed(e, "decoding eager")
            current = decode_one
            return decode_one(*args)

    return step


def cache_span(filled: int, block_size: int) -> int:
    """How much of the cache a decode step reads when `filled` window positions hold tokens: the smallest power
    of two, at least 128, that covers them (capped at block_size). Short windows skip most of the cache, for one
    compiled graph per span."""
    return min(block_size, max(128, 1 << (filled - 1).bit_length()))


@torch.no_grad()
def generate_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling = Sampling(),
                    stop_ids: tuple[int, ...] = (), use_cache: bool = True, compiled: bool = False,
                    cuda_graph: bool = False) -> Iterator[torch.Tensor]:
    """Yield the next token of every row of idx (B, T), (B,) at a time, up to max_new_tokens. A row that
    produced one of stop_ids repeats it from then on; generation ends once every row has. compiled: the decode
    step compiled (compiled_decode_one); cuda_graph (on a CUDA device): the eager step replayed as CUDA graphs
    captured by hand (GraphedDecode). Each token is yielded once the next one is queued, so the device works on
    token t + 1 while the caller reads token t.

    The model sees a window of the sequence, at most block_size tokens. Learned positions tie every cached
    key to its place in the window, so the window cannot slide one token at a time without recomputing all
    of it; instead, when it is full it jumps: it restarts from the last 3/4 block_size tokens, which are
    prefilled in one pass. use_cache=False runs the same windows through the full model every step (the
    reference path: same tokens, many times slower)."""
    B, T = idx.shape
    block = model.config.block_size
    device = idx.device
    step = decode_step(model, B, compiled, cuda_graph) if use_cache else decode_one
    seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device).scatter_(1, idx, True)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    positions = torch.arange(block, device=device)  # input_pos as slices of this: no host-to-device copies
    if use_cache:
        setup_cache(model, B)
    tokens = idx
    start = max(0, T - block)  # the window is tokens[:, start:]
    next_id = None  # the last token generated, (B,)
    last = None  # the token computed one step before next_id, and whether every row had stopped then
    for _ in range(max_new_tokens):
        length = tokens.size(1)
        jump = length - start > block
        if jump:  # the window is full: restart it from the last 3/4 of a block
            start = length - max(1, block * 3 // 4)
        filled = length - start
        if use_cache and next_id is not None and not jump:
            # in: next_id (B, 1), not tokens[:, -1:], a slice whose stride changes every step (a recompile);
            # out: a clone, since a CUDA graph reuses its output buffer on the next replay
            next_id = step(model, next_id[:, None], positions[filled - 1 : filled], seen, sampling,
                           cache_span(filled, block)).clone()
        else:  # a prefill of the (new) window, or the reference path's full forward
            next_id = prefill(model, tokens[:, start:], positions[:filled] if use_cache else None, sampling, seen)
        if stop_ids:
            next_id = torch.where(finished, tokens[:, -1], next_id)
            finished |= torch.isin(next_id, stops)
        if sampling.repetition_penalty != 1.0:
            seen.scatter_(1, next_id[:, None], True)
        tokens = torch.cat((tokens, next_id[:, None]), dim=1)
        if last is not None:
            yield last[0]
            if last[1] is not None and bool(last[1]):  # waits only for the step before the one queued
                return
        last = next_id, finished.all() if stop_ids else None
    if last is not None:
        yield last[0]


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling = Sampling(),
             **kwargs: object) -> torch.Tensor:
    """idx (B, T) extended by up to max_new_tokens sampled tokens -> (B, T + n); see generate_tokens."""
    new = list(generate_tokens(model, idx, max_new_tokens, sampling, **kwargs))
    return torch.cat([idx, *(t[:, None] for t in new)], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# samples during training (train.py's sample_interval): fixed prompts continued greedily and sampled


SAMPLE_WAYS = {"greedy": 0.0, "sampled": 0.8}  # each way's temperature


def data_tokenizer(meta: dict[str, Any], sample_interval: int, prompts: str) -> Tokenizer | None:
    """The data's tokenizer, for bits per byte and the samples during training (sample_interval: their prompts
    checked now); None where it cannot be built here (an unknown kind, say): training goes on with the loss alone,
    and refuses samples it cannot decode."""
    try:
        tok = Tokenizer(meta)
    except (ValueError, KeyError, UserError) as e:
        if sample_interval:
            raise UserError(f"sample_interval={sample_interval}: the data's tokenizer cannot be built ({e}); "
                            "set sample_interval=0") from None
        return None
    if sample_interval:
        sample_prompts(prompts, tok)
    return tok


def sample_prompts(prompts: str, tok: Tokenizer) -> list[str]:
    """The prompts of the samples during training: `prompts` split at '|', else a new document (BPE) or a new line
    (characters); a prompt the tokenizer cannot encode is refused now, not at the first sample."""
    if prompts:
        chosen = prompts.split("|")
    elif tok.kind == "char":
        chosen = ["\n" if "\n" in tok.chars else tok.chars[0]]
    else:
        chosen = ["<|endoftext|>"]
    for prompt in chosen:
        if not tok.encode(prompt):
            raise UserError(f"sample_prompts: an empty prompt in {prompts!r}")
    return chosen


def training_samples(model: GPT, tok: Tokenizer, prompts: list[str], device: torch.device,
                     ctx: contextlib.AbstractContextManager, max_new_tokens: int,
                     seed: int) -> list[tuple[str, dict[str, str]]]:
    """Each prompt with its continuations by a model in training, {way: text} for each of SAMPLE_WAYS, drawn from
    the tokenizer's ids only (not the padding rows). The draws come from a random state of their own, seeded with
    `seed`, so the caller's (training's dropout masks) goes on as it would without samples; the KV cache is freed
    and the model left in train mode."""
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), ctx:
            torch.manual_seed(seed)
            samples = []
            for prompt in prompts:
                idx = torch.tensor([tok.encode(prompt)], device=device)  # (1, T)
                texts = {}
                for way, temperature in SAMPLE_WAYS.items():
                    sampling = Sampling(temperature=temperature, vocab=tok.vocab_size)
                    texts[way] = tok.decode(generate(model, idx, max_new_tokens, sampling)[0, idx.size(1):].tolist())
                samples.append((prompt, texts))
            return samples
    finally:
        clear_cache(model)
        model.train()
