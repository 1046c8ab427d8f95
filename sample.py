"""Generate text from a trained checkpoint or OpenAI's GPT-2, or score a text under the model.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --top_p=0.9 --stop="\n\n"
    python sample.py --out_dir=out-shakespeare-char --score=FILE:data/shakespeare_char/input.txt

The text is encoded and decoded with the tokenizer recorded in the checkpoint (from its dataset's meta.json);
a checkpoint that does not say which tokenizer made it is refused rather than decoded with a guess.
"""

from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
import codecs
import math
import os
import sys
from dataclasses import dataclass

import torch
from torch.nn import functional as F

import configurator
import process
import runtime
from configurator import UserError
from generate import Sampling, generate_tokens
from model import GPT
from source import Source
from tokenizer import Tokenizer, read_text_file


@dataclass
class SampleConfig:
    """Sample from a trained model (or score a text with it)."""

    init_from: str = "resume"  # resume (from out_dir) | gpt2 | gpt2-medium | gpt2-large | gpt2-xl
    out_dir: str = "out"  # the checkpoint's folder (init_from=resume)
    checkpoint: str = "best"  # best: best.pt, the best validation loss (ckpt.pt where none) | latest: ckpt.pt
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 10  # generated together, as one batch
    max_new_tokens: int = 500  # at most this many new tokens per sample
    temperature: float = 0.8  # 1.0 = the model's distribution, lower = more conservative, 0 = greedy
    top_k: int | None = None  # keep only the k most likely tokens (None = all)
    top_p: float = 1.0  # nucleus: keep the most likely tokens up to this probability mass (1.0 = all)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text (1.0 = off)
    stop: str = ""  # stop strings, separated by '|'; escapes such as \n work; the stop string is not printed
    stop_at_eot: bool = True  # end a sample at the end-of-text token (tokenizers that have one)
    stream: bool = True  # print tokens as they come (with num_samples=1; otherwise whole samples)
    kv_cache: bool = True  # False: recompute the whole window every token (the slow reference path)
    score: str = ""  # a text or FILE:path: print per-token losses, total loss and perplexity instead of sampling
    seed: int = 1337  # the same seed gives the same samples
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 elsewhere) | ...
    cuda_graph: bool = True  # on a GPU, replay the one-token decode step as CUDA graphs (no compile wait)
    compile: bool = False  # compile the decode step instead, with autotuning: minutes of warm-up


def read_text(arg: str) -> str:
    """The argument itself, or the contents of the file a FILE:path argument names."""
    if arg.startswith("FILE:"):
        path = arg[len("FILE:"):]
        if not os.path.isfile(path):
            raise UserError(f"file not found: {path}")
        return read_text_file(path)
    return arg


def controls(cfg: SampleConfig, vocab_size: int) -> Sampling:
    """The sampling controls of the settings, checked."""
    if cfg.num_samples < 1 or cfg.max_new_tokens < 1:
        raise UserError("num_samples and max_new_tokens must be at least 1")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UserError(f"top_k must be at least 1 (or None), got {cfg.top_k}")
    top_k = cfg.top_k
    if top_k is not None and top_k > vocab_size:  # nanoGPT's habitual 200 on a char model: all of them
        print(f"note: top_k={top_k} is more than the vocabulary's {vocab_size} tokens: keeping all of them",
              file=sys.stderr)
        top_k = None
    try:
        return Sampling(cfg.temperature, top_k, cfg.top_p, cfg.repetition_penalty)
    except ValueError as e:
        raise UserError(str(e)) from None


@torch.no_grad()
def token_losses(model: GPT, ids: list[int], device: torch.device) -> torch.Tensor:
    """Loss of every token after the first, given the ones before it (N-1,). A text longer than block_size is
    read in windows of block_size that advance by half of it; each window scores only the tokens no earlier
    window scored, so every token but the first block_size has at least half a block of context."""
    block = model.config.block_size
    n = len(ids)
    data = torch.tensor(ids, dtype=torch.long, device=device)
    losses = torch.empty(n - 1, device=device)
    begin = 0  # the window's first input
    scored = 0  # targets data[1 : scored + 1] are done
    while scored < n - 1:
        end = min(begin + block, n - 1)  # inputs data[begin:end], targets data[begin + 1 : end + 1]
        logits = model(data[None, begin:end])[0][0]  # (end - begin, vocab)
        window_losses = F.cross_entropy(logits.float(), data[begin + 1 : end + 1], reduction="none")
        losses[scored:end] = window_losses[scored - begin :]
        scored = end
        begin += max(1, block // 2)
    return losses


def continuations(model: GPT, tok: Tokenizer, cfg: SampleConfig, ids: list[int],
                  device: torch.device) -> list[str]:
    """Sample cfg.num_samples continuations of ids as one batch; returns their texts (without the prompt).
    With stream, the single sample is printed as it grows, held back by the longest stop string's length."""
    # escapes such as \n become characters; other non-ASCII text is kept as it is
    stops = [s.encode("latin-1", "backslashreplace").decode("unicode_escape") for s in cfg.stop.split("|") if s]
    stop_ids = (tok.eot_id,) if cfg.stop_at_eot and tok.eot_id is not None else ()
    n = cfg.num_samples
    decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(n)]
    texts = [""] * n
    done = [False] * n
    shown = 0  # characters of texts[0] printed so far
    stream = cfg.stream and n == 1
    hold = max(map(len, stops), default=1) - 1  # the tail that may still become a stop string
    x = torch.tensor(ids, dtype=torch.long, device=device)[None].repeat(n, 1)
    steps = generate_tokens(model, x, cfg.max_new_tokens, controls(cfg, tok.vocab_size), stop_ids,
                            use_cache=cfg.kv_cache, compiled=cfg.compile,
                            cuda_graph=cfg.cuda_graph and device.type == "cuda")
    for next_ids in steps:
        for i, token in enumerate(next_ids.tolist()):
            if done[i] or token in stop_ids:
                done[i] = True
                continue
            texts[i] += decoders[i].decode(tok.token_bytes(token))
            cuts = [texts[i].find(s) for s in stops if s in texts[i]]
            if cuts:
                texts[i] = texts[i][: min(cuts)]
                done[i] = True
        if stream:
            visible = len(texts[0]) if done[0] else max(shown, len(texts[0]) - hold)
            print(texts[0][shown:visible], end="", flush=True)
            shown = max(shown, visible)
        if all(done):
            break
    texts = [t if d else t + dec.decode(b"", final=True) for t, d, dec in zip(texts, done, decoders)]
    if stream:
        print(texts[0][shown:])
    return texts


def main(argv: list[str]) -> list[str]:
    cfg = configurator.load(SampleConfig, argv)
    device = runtime.resolve_device(cfg.device)
    dtype = runtime.resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    opened = Source.open(cfg.init_from, cfg.out_dir, cfg.checkpoint)
    tok = opened.tokenizer()
    model = opened.model(device, dtype)  # in the working dtype (no autocast): decoding reads every weight per
    # token, half the bytes in bf16
    controls(cfg, tok.vocab_size)  # bad settings fail before any work
    c = model.config  # the KV cache of num_samples rows, the largest thing decoding allocates
    cache = 2 * c.n_layer * cfg.num_samples * c.block_size * c.n_embd * dtype.itemsize
    runtime.check_fits(cache, device, f"num_samples={cfg.num_samples} (a KV cache row each)",
                       "sample fewer at a time")

    if cfg.score:
        ids = tok.encode(read_text(cfg.score))
        if len(ids) < 2:
            raise UserError("--score needs a text of at least two tokens: the first one has nothing to predict it")
        losses = token_losses(model, ids, device).tolist()
        for token, loss in zip(ids[1:], losses):
            print(f"{tok.decode([token])!r}\t{loss:.4f}")
        mean = sum(losses) / len(losses)
        print(f"{len(losses)} tokens scored: total loss {sum(losses):.4f} nats, mean loss {mean:.4f}, "
              f"perplexity {math.exp(mean):.4f}")
        return [f"{mean:.6f}"]

    prompt = read_text(cfg.start)
    ids = tok.encode(prompt)
    if not ids:
        if tok.eot_id is None:
            raise UserError("empty prompt and this tokenizer has no end-of-text token to start from")
        ids = [tok.eot_id]
    if cfg.stream and cfg.num_samples == 1:
        print(prompt, end="", flush=True)
    samples = [prompt + text for text in continuations(model, tok, cfg, ids, device)]
    if not (cfg.stream and cfg.num_samples == 1):
        for text in samples:
            print(text)
            print("---------------")
    return samples


if __name__ == "__main__":
    process.run(main)
