"""model.py: shapes, causality, GPT-2's parameter count and init, optimizer groups, cropping, FLOPs and MFU."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import runtime
from conftest import tiny_gpt
from model import GPT, GPTConfig

GPT2_124M = {"vocab_size": 50257, "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768, "bias": True}


def tiny(seed: int = 0, **overrides: object) -> GPT:
    return tiny_gpt(seed, **{"vocab_size": 67, "block_size": 16} | overrides)


def test_forward_shapes_and_loss():
    model = tiny()
    idx = torch.randint(0, 67, (3, 11))
    logits, loss = model(idx)
    assert logits.shape == (3, 11, 67)
    assert loss is None
    logits, loss = model(idx, torch.randint(0, 67, (3, 11)))
    assert loss.shape == ()
    assert math.isclose(loss.item(), math.log(67), rel_tol=0.05)  # near-uniform predictions at init


def test_targets_of_minus_one_are_ignored():
    model = tiny()
    idx = torch.randint(0, 67, (2, 8))
    targets = torch.randint(0, 67, (2, 8))
    masked = targets.clone()
    masked[:, 4:] = -1
    _, loss_masked = model(idx, masked)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 67), targets[:, :4].reshape(-1))
    torch.testing.assert_close(loss_masked, expected)


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros((1, 17), dtype=torch.long))


def test_causality():
    model = tiny()
    idx = torch.randint(0, 67, (2, 16))
    t = 9
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % 67
    with torch.no_grad():
        before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
    assert (after[:, t:] - before[:, t:]).abs().amax(dim=-1).min() > 0  # every later position sees it


def test_weight_tying_is_one_tensor():
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p is model.lm_head.weight for p in model.parameters()) == 1
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()


def test_gpt2_124m_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig(**GPT2_124M))
    assert model.get_num_params(non_embedding=False) == 124_439_808  # OpenAI's GPT-2 small, counted by HF
    # non-embedding: the tied wte still does lm_head's work; wpe's 1024 x 768 is dropped
    assert model.get_num_params() == 124_439_808 - 1024 * 768


@pytest.mark.parametrize("overrides", [{}, {"bias": False, "n_head": 4}, {"mlp": "swiglu", "n_kv_head": 1}],
                         ids=["gpt2", "no_bias_4_heads", "swiglu_mqa"])
def test_flops_per_token_matches_torch_flop_counter(overrides: dict):
    # torch's FlopCounterMode counts the matmul FLOPs of a real forward + backward (attention through SDPA's math
    # kernel, whose matmuls it sees: the full T x T scores, as the formula counts them). The formula also counts
    # 6 per norm gain and bias, which do no matmul work.
    model = tiny(**overrides).train()
    B, T = 2, model.config.block_size
    idx = torch.randint(0, 67, (B, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert model.flops_per_token() == counter.get_total_flops() / (B * T) + 6 * vectors


def test_gpt2_parameter_names_match_hf_layout():
    names = set(tiny(n_layer=1).state_dict())
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
                "lm_head.weight"} | {f"transformer.h.0.{n}" for n in (
                    "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                    "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                    "mlp.c_proj.weight", "mlp.c_proj.bias")}
    assert names == expected


def test_bias_false_has_no_biases():
    model = tiny(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith(".bias")]


def test_config_refuses_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_init_scale():
    n_layer = 4
    model = tiny(seed=1, vocab_size=1024, block_size=256, n_layer=n_layer, n_head=4, n_embd=256)
    proj_std = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.count_nonzero(p) == 0, name
        elif ".ln_" in name:
            assert torch.all(p == 1), name
        elif name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(proj_std, rel=0.03), name
            assert p.mean().abs().item() < proj_std * 0.02, name
        else:  # wte (= lm_head), wpe, c_attn, c_fc
            assert p.std().item() == pytest.approx(0.02, rel=0.03), name
            assert p.mean().abs().item() < 0.02 * 0.02, name


def test_optimizer_groups():
    model = tiny()
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    params = dict(model.named_parameters())  # the tied weight appears once
    assert {id(p) for p in params.values() if p.dim() >= 2} == decay
    assert {id(p) for p in params.values() if p.dim() < 2} == no_decay
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in params.values())  # each parameter in exactly one group
    assert listed.count(id(model.lm_head.weight)) == 1
    assert all(g["lr"] == 1e-3 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)


def test_crop_block_size():
    model = tiny()
    idx = torch.randint(0, 67, (2, 8))
    with torch.no_grad():
        before = model(idx)[0]
        model.crop_block_size(8)
        after = model(idx)[0]
    assert model.config.block_size == 8
    assert model.transformer.wpe.weight.shape == (8, 32)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros((1, 9), dtype=torch.long))


def test_crop_block_size_refuses_growing():
    with pytest.raises(ValueError, match="block_size"):
        tiny().crop_block_size(17)


def test_crop_vocab():
    model = tiny()
    idx = torch.randint(0, 60, (2, 8))
    with torch.no_grad():
        before = model(idx)[0]
        model.crop_vocab(60)
        after = model(idx)[0]
    assert after.shape == (2, 8, 60)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.shape == (60, 32)
    torch.testing.assert_close(after, before[..., :60], rtol=0, atol=0)


def test_mfu():
    model = tiny()
    assert runtime.peak_flops("cpu") is None
    assert model.estimate_mfu(tokens_per_iter=1000, dt=0.1, peak_flops=None) is None
    # a device exactly as fast as the model's FLOPs at 1000 tokens in 0.1 s is used fully; twice as fast, half
    peak = model.flops_per_token() * 1000 / 0.1
    assert model.estimate_mfu(1000, 0.1, peak) == pytest.approx(1.0)
    assert model.estimate_mfu(1000, 0.1, 2 * peak) == pytest.approx(0.5)
