"""hf.py: OpenAI's GPT-2 in through transformers (from_hf, pretrained) and our GPT out (to_hf) as GPT-2 or Llama,
checked offline against transformers' models at tiny random sizes; what each target cannot express
(incompatibilities) and which one a model goes to (export_target); pretrained's refusals.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, PreTrainedModel

import hf
from conftest import tiny_gpt
from configurator import UserError
from generate import GREEDY, generate
from model import GPT, GPTConfig


def small_hf_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_positions=64, n_embd=48, n_layer=2, n_head=4, vocab_size=101, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def logits(ours: GPT, theirs: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, ours.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return ours(x)[0], theirs(x).logits


def max_logit_diff(ours: GPT, theirs: PreTrainedModel) -> float:
    mine, hf_logits = logits(ours, theirs)
    return (mine - hf_logits).abs().max().item()


def off_init(model: GPT) -> GPT:
    """model with every tensor drawn afresh: biases and norm gains away from their init (zeros, ones)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def test_converted_logits_match_transformers():
    theirs = small_hf_model()
    ours = hf.from_hf(theirs).eval()
    assert max_logit_diff(ours, theirs) <= 1e-4
    assert ours.get_num_params(non_embedding=False) == sum(p.numel() for p in theirs.parameters())
    c = ours.config
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.bias) == (64, 101, 2, 4, 48, True)


def test_converted_greedy_generation_matches_transformers():
    theirs = small_hf_model()
    ours = hf.from_hf(theirs).eval()
    x = torch.randint(1, 101, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                                   min_new_tokens=12, pad_token_id=0)
    assert torch.equal(generate(ours, x, 12, GREEDY), expected)


def test_from_hf_sets_the_dropout_asked_for():
    model = hf.from_hf(small_hf_model(), dropout=0.1)
    assert model.config.dropout == 0.1
    assert model.transformer.drop.p == 0.1


def test_gpt2_import_then_export_is_exact():
    theirs = small_hf_model()
    back = hf.to_hf(hf.from_hf(theirs))
    original, exported = theirs.state_dict(), back.state_dict()
    assert original.keys() == exported.keys()
    assert [k for k in original if not torch.equal(original[k], exported[k])] == []


@pytest.mark.parametrize("bias", [True, False])
def test_to_hf_computes_what_our_model_computes(bias: bool):
    ours = off_init(tiny_gpt(bias=bias, block_size=40))
    theirs = hf.to_hf(ours, eot_id=7)
    assert type(theirs) is GPT2LMHeadModel
    assert (theirs.config.bos_token_id, theirs.config.eos_token_id) == (7, 7)
    assert max_logit_diff(ours, theirs) <= 1e-5
    # GPT-2 always has biases: a model without them maps onto zero ones
    biases = [p for name, p in theirs.named_parameters() if name.endswith(".bias")]
    assert len(biases) == 2 * 6 + 1  # ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj per layer; ln_f
    assert [bool(p.any()) for p in biases] == [bias] * len(biases)


def test_incompatibilities_name_the_setting():
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
    assert hf.incompatibilities(config) == []
    llama_like = dataclasses.replace(config, norm="rmsnorm", n_kv_head=1, tie_embeddings=True)
    assert hf.incompatibilities(llama_like) == [
        "norm='rmsnorm' (GPT-2 needs 'layernorm')", "n_kv_head=1 (GPT-2 needs n_head)"]
    assert hf.incompatibilities(dataclasses.replace(config, n_kv_head=config.n_head)) == []
    banded = dataclasses.replace(config, attn_pattern="alternating", window_size=4)
    assert hf.incompatibilities(banded) == ["attn_pattern='alternating' (GPT-2 needs 'dense')"]
    others = dataclasses.replace(config, post_norm=True, mlp="relu", pos_emb="rope", tie_embeddings=False,
                                 head_size=8, mlp_hidden=64)
    assert hf.incompatibilities(others) == [
        "post_norm=True (GPT-2 needs False)", "mlp='relu' (GPT-2 needs 'gelu')",
        "pos_emb='rope' (GPT-2 needs 'learned')", "tie_embeddings=False (GPT-2 needs True)",
        "head_size=8 (GPT-2 needs n_embd // n_head)", "mlp_hidden=64 (GPT-2 needs 4 * n_embd)"]
    # a head size or MLP width given, but the one GPT-2 has anyway, is fine
    assert hf.incompatibilities(dataclasses.replace(config, head_size=16, mlp_hidden=128)) == []
    assert hf.incompatibilities(dataclasses.replace(config, parallel_block=True)) == [
        "parallel_block=True (GPT-2 needs False)"]
    switches = dataclasses.replace(config, qk_norm=True, mlp="relu2", logit_softcap=30.0, zero_init_proj=True)
    assert hf.incompatibilities(switches) == [  # zero_init_proj is an init only: GPT-2 takes its weights
        "mlp='relu2' (GPT-2 needs 'gelu')", "qk_norm=True (GPT-2 needs False)",
        "logit_softcap=30.0 (GPT-2 needs None)"]
    modded = dataclasses.replace(config, embed_norm=True, attn_scale=0.12, unet_skips=True, value_embeds=1,
                                 x0_mix=True)
    assert hf.incompatibilities(modded) == [
        "embed_norm=True (GPT-2 needs False)", "attn_scale=0.12 (GPT-2 needs None)",
        "unet_skips=True (GPT-2 needs False)", "value_embeds=1 (GPT-2 needs 0)", "x0_mix=True (GPT-2 needs False)"]


def test_to_hf_computes_what_a_model_without_a_qkv_bias_computes():
    ours = off_init(tiny_gpt(qkv_bias=False, block_size=40))  # the other biases on: GPT-2 holds a zero q/k/v bias
    theirs = hf.to_hf(ours)
    assert max_logit_diff(ours, theirs) <= 1e-5
    assert all(not block.attn.c_attn.bias.any() for block in theirs.transformer.h)


LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope", "bias": False}  # the quick start's switches


@pytest.mark.parametrize("switches", [
    {},
    {"tie_embeddings": False, "n_kv_head": 1},
    {"n_head": 4, "n_kv_head": 2, "head_size": 12, "mlp_hidden": 40, "rope_base": 500.0},
    {"bias": True},
    {"qkv_bias": True},  # q, k, v biased, o not: Llama's o bias zero
    {"bias": True, "qkv_bias": False},
], ids=["tied", "untied_mqa", "gqa_own_sizes", "bias", "qkv_bias", "bias_but_qkv"])
def test_to_hf_writes_llama_computing_what_our_model_computes(switches: dict[str, object]):
    ours = off_init(tiny_gpt(**LLAMA | switches | {"block_size": 40}))
    theirs = hf.to_hf(ours, eot_id=7)
    c, their_c = ours.config, theirs.config
    assert type(theirs) is LlamaForCausalLM
    assert (their_c.num_key_value_heads, their_c.head_dim, their_c.intermediate_size) == (c.kv_heads, c.head_dim,
                                                                                           c.hidden)
    assert (their_c.max_position_embeddings, their_c.rms_norm_eps, their_c.bos_token_id) == (40, 1e-5, 7)
    assert (theirs.lm_head.weight is theirs.model.embed_tokens.weight) == c.tie_embeddings
    torch.testing.assert_close(*logits(ours, theirs))


def test_exported_llama_generates_what_our_model_generates():
    ours = off_init(tiny_gpt(**LLAMA, n_kv_head=1, tie_embeddings=False))
    theirs = hf.to_hf(ours)
    x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # transformers decodes through its own KV cache
        expected = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, min_new_tokens=16,
                                   do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, x, 16, GREEDY), expected)


def test_incompatibilities_with_llama_name_the_setting():
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32, **LLAMA)
    assert hf.incompatibilities(config, "Llama") == []
    # its head size, key/value heads, MLP width, rope base, tying and biases are LlamaConfig's settings
    free = dataclasses.replace(config, head_size=4, n_kv_head=1, mlp_hidden=24, rope_base=1e6, tie_embeddings=False,
                               bias=True, qkv_bias=False, zero_init_proj=True)
    assert hf.incompatibilities(free, "Llama") == []
    others = dataclasses.replace(config, norm="layernorm", post_norm=True, mlp="relu2", pos_emb="learned",
                                 attn_pattern="alternating", qk_norm=True, logit_softcap=30.0)
    assert hf.incompatibilities(others, "Llama") == [
        "norm='layernorm' (Llama needs 'rmsnorm')", "post_norm=True (Llama needs False)",
        "mlp='relu2' (Llama needs 'swiglu')", "pos_emb='learned' (Llama needs 'rope')",
        "attn_pattern='alternating' (Llama needs 'dense')", "qk_norm=True (Llama needs False)",
        "logit_softcap=30.0 (Llama needs None)"]
    assert hf.incompatibilities(dataclasses.replace(config, parallel_block=True), "Llama") == [
        "parallel_block=True (Llama needs False)"]


def test_export_target_is_the_one_that_fits():
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32)
    assert hf.export_target(config) == "GPT-2"
    assert hf.export_target(dataclasses.replace(config, **LLAMA)) == "Llama"


@pytest.mark.parametrize(("switches", "said"), [
    ({"norm": "rmsnorm", "pos_emb": "rope"}, "for Llama: mlp='gelu' (Llama needs 'swiglu')"),
    ({"norm": "rmsnorm", "n_kv_head": 1},  # two each way (Llama: mlp, pos_emb): the first target, GPT-2
     "for GPT-2: norm='rmsnorm' (GPT-2 needs 'layernorm'), n_kv_head=1 (GPT-2 needs n_head)"),
    ({"qk_norm": True, "logit_softcap": 30.0},
     "for GPT-2: qk_norm=True (GPT-2 needs False), logit_softcap=30.0 (GPT-2 needs None)"),
    ({**LLAMA, "logit_softcap": 30.0}, "for Llama: logit_softcap=30.0 (Llama needs None)"),
])
def test_to_hf_refuses_what_neither_expresses_naming_the_nearest(switches: dict[str, object], said: str):
    with pytest.raises(UserError, match=rf"^cannot export: neither GPT-2 nor Llama expresses this model; "
                                        rf"{re.escape(said)}$"):
        hf.to_hf(tiny_gpt(**switches))


def test_each_target_refuses_what_it_cannot_express():
    with pytest.raises(UserError, match=r"^cannot export to GPT-2: norm='rmsnorm' \(GPT-2 needs 'layernorm'\), "
                                        r"pos_emb='rope' \(GPT-2 needs 'learned'\)$"):
        hf.to_gpt2(tiny_gpt(norm="rmsnorm", pos_emb="rope"))
    with pytest.raises(UserError, match=r"^cannot export to Llama: mlp='gelu' \(Llama needs 'swiglu'\)$"):
        hf.to_llama(tiny_gpt(norm="rmsnorm", pos_emb="rope"))


def test_to_hf_takes_a_zero_init_proj_model():
    ours = tiny_gpt(zero_init_proj=True, block_size=40)
    with torch.no_grad():
        for block in ours.transformer.h:  # as after training: the projections off zero
            block.attn.c_proj.weight.normal_(0.0, 0.1)
            block.mlp.c_proj.weight.normal_(0.0, 0.1)
    assert max_logit_diff(ours, hf.to_hf(ours)) <= 1e-5


def test_pretrained_loads_the_named_weights_through_transformers(monkeypatch: pytest.MonkeyPatch):
    theirs = small_hf_model()
    asked = []

    def from_pretrained(name: str) -> GPT2LMHeadModel:  # offline: the small model stands in for OpenAI's
        asked.append(name)
        return theirs

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", from_pretrained)
    ours = hf.pretrained("gpt2-medium", dropout=0.1).eval()
    assert asked == ["gpt2-medium"]
    assert ours.config.dropout == 0.1
    assert max_logit_diff(ours, theirs) <= 1e-4


def test_pretrained_refuses_unknown_names():
    with pytest.raises(UserError, match=r"^unknown pretrained model 'gpt5' \(one of gpt2, gpt2-medium, gpt2-large, "
                                        r"gpt2-xl\)$"):
        hf.pretrained("gpt5")


@pytest.mark.parametrize("error", [OSError, ValueError])
def test_pretrained_that_cannot_load_is_one_line(monkeypatch: pytest.MonkeyPatch, error: type[Exception]):
    def offline(name: str) -> GPT2LMHeadModel:
        raise error(f"We couldn't connect to 'https://huggingface.co' to load {name}.\nCheck your connection.")

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", offline)
    with pytest.raises(UserError, match=r"^could not load gpt2 weights \(they download on first use\): We couldn't "
                                        r"connect to 'https://huggingface.co' to load gpt2\.$"):
        hf.pretrained("gpt2")
