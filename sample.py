"""Generate text from a trained checkpoint.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --start=FILE:prompt.txt

The text is encoded and decoded with the tokenizer recorded in the checkpoint (from its dataset's meta.json);
a checkpoint that does not say which tokenizer made it is refused rather than decoded with a guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import checkpoint
import configurator
from configurator import UserError
from tokenizer import GPT2_META, Tokenizer
from train import autocast, resolve_device, resolve_dtype


@dataclass
class SampleConfig:
    """Sample from a trained model."""

    init_from: str = "resume"  # resume (from out_dir) | gpt2 | gpt2-medium | gpt2-large | gpt2-xl
    out_dir: str = "out"
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 10
    max_new_tokens: int = 500
    temperature: float = 0.8  # 1.0 = the model's distribution, lower = more conservative, 0 = greedy
    top_k: int | None = 200  # keep only the k most likely tokens (None = all)
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False  # torch.compile the forward pass (pays off for long generations on a GPU)


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        if not os.path.isfile(path):
            raise UserError(f"prompt file not found: {path}")
        with open(path, encoding="utf-8") as f:
            return f.read()
    return start


def main(argv: list[str]) -> list[str]:
    cfg = configurator.load(SampleConfig, argv)
    if cfg.num_samples < 1 or cfg.max_new_tokens < 1:
        raise UserError("num_samples and max_new_tokens must be at least 1")
    if cfg.temperature < 0:
        raise UserError(f"temperature must be >= 0, got {cfg.temperature}")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UserError(f"top_k must be at least 1 (or None), got {cfg.top_k}")
    device = resolve_device(cfg.device)
    ctx = autocast(device, resolve_dtype(cfg.dtype, device))
    torch.manual_seed(cfg.seed)

    if cfg.init_from == "resume":
        ckpt = checkpoint.load(cfg.out_dir, map_location="cpu")
        if "meta" not in ckpt:
            raise UserError(f"checkpoint in {cfg.out_dir} does not record its tokenizer; refusing to guess one")
        tok = Tokenizer(ckpt["meta"])
        model = checkpoint.model_from(ckpt)
        model.crop_vocab(tok.vocab_size)  # never sample the padding rows train.py added
    else:
        tok, model = Tokenizer(GPT2_META), checkpoint.pretrained(cfg.init_from)
    model.eval().to(device)
    if cfg.compile:
        model.forward = torch.compile(model.forward, dynamic=True)  # generate calls self(), so compile forward

    prompt = read_prompt(cfg.start)
    ids = tok.encode(prompt)
    if not ids:
        if tok.eot_id is None:
            raise UserError("empty prompt and this tokenizer has no end-of-text token to start from")
        ids = [tok.eot_id]
    x = torch.tensor(ids, dtype=torch.long, device=device)[None].expand(cfg.num_samples, -1)
    with ctx:
        y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k)
    samples = [tok.decode(row.tolist()) for row in y]
    for text in samples:
        print(text)
        print("---------------")
    return samples


if __name__ == "__main__":
    configurator.run(main)
