"""The architecture switches of model.GPTConfig, one by one and in the combinations of known models: what each one
builds, exact parameter counts (on the meta device), causality, the KV cache against the full forward, RoPE's
algebra, the init scale, a short training run per family (checkpoint, resume, sample.py), and the errors for
settings that do not fit together.

Models are tiny (2 layers, 32 wide, 4 heads, block 32) and run on the CPU in float32.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import checkpoint
import generate
import model as model_module
import sample
import train
from conftest import CharData, reference_tokens, run_main, tiny_flags, tiny_gpt
from generate import GREEDY, Sampling, clear_cache, setup_cache
from model import GPT, MLP, Block, CausalSelfAttention, GPTConfig, apply_rope, make_norm, rope_tables

VOCAB = 61
BASE = {"vocab_size": VOCAB, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32, "dropout": 0.0, "bias": True}

LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope", "n_kv_head": 2, "bias": False, "tie_embeddings": False}
GPT1 = {"post_norm": True}
PALM = {"parallel_block": True, "n_kv_head": 1, "bias": False}
BANDED = {"attn_pattern": "alternating"}  # GPT-3: every other layer locally banded (with a window_size)

ARCHS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "llama": LLAMA,
    "gpt1": GPT1,
    "palm": PALM,
    "head_size_12": {"head_size": 12},  # 4 heads of 12 = 48 wide attention in a 32-wide model
    "head_size_12_rope_gqa": {"head_size": 12, "pos_emb": "rope", "n_kv_head": 2},
    "no_positions": {"pos_emb": "none"},
    "relu": {"mlp": "relu"},
    "no_qkv_bias": {"qkv_bias": False},  # bias=True everywhere else
    "qkv_bias_only": {"bias": False, "qkv_bias": True},  # Qwen's choice
    "rmsnorm": {"norm": "rmsnorm"},
    "swiglu_hidden_40": {"mlp": "swiglu", "mlp_hidden": 40},
    "untied": {"tie_embeddings": False},
    "multi_query_rope_base_100": {"n_kv_head": 1, "pos_emb": "rope", "rope_base": 100.0},
    "gpt1_rmsnorm_rope_gqa": {"post_norm": True, "norm": "rmsnorm", "pos_emb": "rope", "n_kv_head": 2},
    "gpt3_banded": {"attn_pattern": "alternating", "window_size": 8},
    "gpt3_banded_rope_gqa_window_1": {"attn_pattern": "alternating", "window_size": 1, "pos_emb": "rope",
                                      "n_kv_head": 2},
}


def config(arch: str, **overrides: Any) -> GPTConfig:
    return GPTConfig(**(BASE | ARCHS[arch] | overrides))


def build(arch: str, seed: int = 0, **overrides: Any) -> GPT:
    return tiny_gpt(seed, **BASE | ARCHS[arch] | overrides)


def random_ids(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


# --- what each switch builds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_and_finite_loss(arch: str):
    model = build(arch)
    idx, targets = random_ids(3, 32), random_ids(3, 32, seed=1)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 32, VOCAB)
    assert torch.isfinite(logits).all()
    assert math.isclose(loss.item(), math.log(VOCAB), rel_tol=0.1)  # near-uniform predictions at init
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_modules_follow_the_switches(arch: str):
    cfg = config(arch)
    model = GPT(cfg)
    tf = model.transformer
    hs = cfg.head_size or 32 // 4  # 4 heads in a 32-wide model unless the head size is set
    kv = cfg.n_kv_head or 4
    assert ("wpe" in tf) == (cfg.pos_emb == "learned")
    assert ("ln_f" in tf) == (not cfg.post_norm)
    assert (model.lm_head.weight is tf.wte.weight) == cfg.tie_embeddings
    for block in tf.h:
        assert (block.ln_2 is None) == cfg.parallel_block
        norms = [block.ln_1, block.ln_2, tf.ln_f if "ln_f" in tf else None]
        assert all(isinstance(n, nn.RMSNorm if cfg.norm == "rmsnorm" else nn.LayerNorm) for n in norms if n)
        attn, mlp = block.attn, block.mlp
        assert attn.c_attn.weight.shape == ((4 + 2 * kv) * hs, 32)
        assert attn.c_proj.weight.shape == (32, 4 * hs)
        qkv_bias = cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias
        assert (attn.c_attn.bias is not None) == qkv_bias
        other_biases = [attn.c_proj.bias, mlp.c_fc.bias, mlp.c_proj.bias]
        assert [b is not None for b in other_biases] == [cfg.bias] * 3
        hidden = cfg.mlp_hidden or (256 if cfg.mlp == "swiglu" else 128)  # 2/3 * 4 * 32 rounded up to 256
        assert mlp.c_fc.weight.shape == ((2 if cfg.mlp == "swiglu" else 1) * hidden, 32)
        assert mlp.c_proj.weight.shape == (32, hidden)
        norm_biases = [n.bias for n in norms if isinstance(n, nn.LayerNorm)]
        assert all((b is not None) == cfg.bias for b in norm_biases)


def test_rmsnorm_is_x_over_its_rms_times_weight():
    norm = make_norm(GPTConfig(n_embd=16, n_head=1, norm="rmsnorm"))
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert not hasattr(norm, "bias") or norm.bias is None  # no centring, no bias


@pytest.mark.parametrize("mlp", ["gelu", "relu", "swiglu"])
def test_mlp_activations(mlp: str):
    torch.manual_seed(0)
    m = MLP(config("gpt2", mlp=mlp, mlp_hidden=24))
    x = torch.randn(2, 5, 32)
    h = m.c_fc(x)
    if mlp == "swiglu":  # silu(x W) * (x V), W and V side by side in c_fc (Shazeer 2020)
        gate, up = h[..., :24], h[..., 24:]
        h = F.silu(gate) * up
    else:
        h = F.relu(h) if mlp == "relu" else F.gelu(h, approximate="tanh")
    torch.testing.assert_close(m(x), m.c_proj(h))


@pytest.mark.parametrize("arch", ["gpt2", "gpt1", "palm"])
def test_block_residual_formulas(arch: str):
    torch.manual_seed(0)
    block = Block(config(arch)).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        out = block(x)
        if arch == "palm":  # x + attn(norm(x)) + mlp(norm(x)), one norm
            h = block.ln_1(x)
            expected = x + block.attn(h) + block.mlp(h)
        elif arch == "gpt1":  # normalise after each residual add
            y = block.ln_1(x + block.attn(x))
            expected = block.ln_2(y + block.mlp(y))
        else:
            y = x + block.attn(block.ln_1(x))
            expected = y + block.mlp(block.ln_2(y))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_grouped_query_attention_is_multi_head_with_shared_keys_and_values(n_kv_head: int):
    # a query head h reads key/value head h // (n_head / n_kv_head), as SDPA's enable_gqa and LLaMA's repeat_kv do
    torch.manual_seed(0)
    cfg = config("gpt2", n_kv_head=n_kv_head, pos_emb="rope", head_size=12)
    gqa = CausalSelfAttention(cfg).eval()
    mha = CausalSelfAttention(config("gpt2", pos_emb="rope", head_size=12)).eval()
    hs = 12
    group = 4 // n_kv_head  # query heads per key/value head
    q, k, v = gqa.c_attn.weight.split([4 * hs, n_kv_head * hs, n_kv_head * hs])
    qb, kb, vb = gqa.c_attn.bias.split([4 * hs, n_kv_head * hs, n_kv_head * hs])

    def repeat(t: torch.Tensor) -> torch.Tensor:  # (nkv * hs, ...) -> (nh * hs, ...), each head `group` times
        return t.unflatten(0, (n_kv_head, hs)).repeat_interleave(group, dim=0).flatten(0, 1)

    with torch.no_grad():
        mha.c_attn.weight.copy_(torch.cat([q, repeat(k), repeat(v)]))
        mha.c_attn.bias.copy_(torch.cat([qb, repeat(kb), repeat(vb)]))
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
        x = torch.randn(2, 9, 32)
        rope = rope_tables(torch.arange(9), hs, 10000.0)
        torch.testing.assert_close(gqa(x, rope=rope), mha(x, rope=rope), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("pos_emb", "same"), [("none", True), ("rope", True), ("learned", False)])
def test_a_repeated_token_carries_position_only_with_learned_embeddings(pos_emb: str, same: bool):
    # without position embeddings (or with RoPE, which only rotates q and k) a run of one token gives every
    # position the same values to average, so the same output; learned positions make them differ
    model = build("gpt2", pos_emb=pos_emb)
    with torch.no_grad():
        logits = model(torch.full((1, 20), 7))[0][0]  # (20, vocab)
    assert torch.allclose(logits, logits[:1].expand_as(logits), atol=1e-5) == same


# --- causality ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("arch", ARCHS)
def test_causality(arch: str, mode: str):
    model = build(arch).train(mode == "train")  # dropout is 0: train mode must be deterministic too
    idx = random_ids(2, 32)
    t = 13
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
    assert (after[:, t:] - before[:, t:]).abs().amax(dim=-1).min() > 0  # every later position sees it


# --- KV cache -------------------------------------------------------------------------------------------------------

# rows, prompt length, new tokens; block_size is 32. One row, and a prompt longer than the window, are the same
# for every architecture: test_generate covers them.
CACHE_CASES = {"batch_past_the_window": (3, 20, 50)}  # the window jumps twice


@pytest.mark.parametrize("case", CACHE_CASES)
@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_gives_the_same_tokens(arch: str, case: str):
    model = build(arch)
    rows, length, new = CACHE_CASES[case]
    idx = random_ids(rows, length, seed=rows * 100 + length)
    assert torch.equal(generate.generate(model, idx, new, GREEDY), reference_tokens(model, idx, new))
    for sampling in (Sampling(1.0), Sampling(0.8, top_k=10)):
        outs = []
        for use_cache in (True, False):
            torch.manual_seed(1234)
            outs.append(generate.generate(model, idx, new, sampling, use_cache=use_cache))
        assert torch.equal(outs[0][:, :length], idx)
        assert torch.equal(outs[0], outs[1]), sampling
    assert model.transformer.h[0].attn.kv_cache is not None  # the cached path really ran


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_through_the_cache_equals_the_full_forward(arch: str):
    model = build(arch)
    cfg = model.config
    x = random_ids(3, 32, seed=5)  # a whole window
    setup_cache(model, 3)
    try:
        caches = [block.attn.kv_cache for block in model.transformer.h]
        hs = cfg.head_size or cfg.n_embd // cfg.n_head
        assert all(c.k.shape == c.v.shape == (3, cfg.n_kv_head or cfg.n_head, 32, hs) for c in caches)
        with torch.no_grad():
            full = model(x)[0]  # (3, 32, vocab)
            prefill = model(x[:, :20], input_pos=torch.arange(20))[0]  # positions 0..19 in one pass
            torch.testing.assert_close(prefill, full[:, :20], rtol=1e-5, atol=1e-5)
            for t in range(20, 32):  # then one token at a time on the filled cache
                logits = model(x[:, t : t + 1], input_pos=torch.tensor([t]))[0][:, -1]
                torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)
        assert all(t.abs().sum(-1).gt(0).all() for c in caches for t in (c.k, c.v))  # every position, every head
    finally:
        clear_cache(model)


# --- parameter accounting (meta device: no memory, no init cost) ----------------------------------------------------

GPT2_124M = {"vocab_size": 50257, "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768, "bias": True}
GPT1_117M = {"vocab_size": 40478, "block_size": 512, "n_layer": 12, "n_head": 12, "n_embd": 768, "bias": True,
             "post_norm": True}
BOOK_163M = GPT2_124M | {"qkv_bias": False, "tie_embeddings": False}  # the "from scratch" book's GPTModel


def meta_model(**args: Any) -> GPT:
    with torch.device("meta"):
        return GPT(GPTConfig(**args))


def test_gpt1_parameter_count():
    model = meta_model(**GPT1_117M)
    assert model.get_num_params(non_embedding=False) == 116_534_784
    assert "ln_f" not in model.transformer
    assert model.get_num_params() == 116_534_784 - 512 * 768  # tied: only wpe is dropped


def test_gpt2_parameter_count():
    model = meta_model(**GPT2_124M)
    assert model.get_num_params(non_embedding=False) == 124_439_808
    assert model.get_num_params() == 124_439_808 - 1024 * 768


def test_from_scratch_book_model_parameter_count_and_size():
    model = meta_model(**BOOK_163M)
    n = model.get_num_params(non_embedding=False)
    assert n == 163_009_536
    assert f"{n * 4 / 2**20:.2f}" == "621.83"  # MiB in float32
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.get_num_params() == n - 50257 * 768 - 1024 * 768  # untied: wte dropped too


def swiglu_hidden(d: int) -> int:
    """LLaMA: int(2/3 * 4d), rounded up to a multiple of 256."""
    return math.ceil(int(2 * 4 * d / 3) / 256) * 256


def test_swiglu_hidden_width():
    assert GPTConfig(n_embd=128, n_head=8, mlp="swiglu").hidden == swiglu_hidden(128) == 512
    assert GPTConfig(n_embd=768, n_head=12, mlp="swiglu").hidden == swiglu_hidden(768) == 2048
    assert GPTConfig(n_embd=4096, n_head=32, mlp="swiglu").hidden == swiglu_hidden(4096) == 11008  # LLaMA-7B
    assert GPTConfig(n_embd=768, n_head=12, mlp="swiglu", mlp_hidden=100).hidden == 100
    assert GPTConfig(n_embd=768, n_head=12, mlp="relu").hidden == 3072


def llama_count(vocab: int, n_layer: int, d: int, n_head: int, n_kv_head: int, hs: int, hidden: int) -> int:
    """From first principles: untied token embedding and output head, no biases, no position table."""
    embeddings = 2 * vocab * d
    attention = d * n_head * hs + 2 * d * n_kv_head * hs + n_head * hs * d  # q, k, v, o
    mlp = 3 * d * hidden  # gate, up, down
    norms = 2 * d  # two RMSNorm gains per layer
    return embeddings + n_layer * (attention + mlp + norms) + d  # + the final norm


def test_small_llama_parameter_count():
    args = {"vocab_size": 1000, "block_size": 128, "n_layer": 3, "n_head": 8, "n_embd": 128} | LLAMA
    model = meta_model(**args)
    expected = llama_count(1000, 3, 128, 8, 2, 16, swiglu_hidden(128))
    assert expected == 1000 * 128 * 2 + 3 * (128 * 128 * 2 + 2 * 128 * 32 + 3 * 128 * 512 + 256) + 128
    assert model.get_num_params(non_embedding=False) == expected
    assert "wpe" not in model.transformer
    assert model.get_num_params() == expected - 1000 * 128  # untied: wte dropped, and there is no wpe


def test_llama_7b_parameter_count():
    model = meta_model(vocab_size=32000, block_size=2048, n_layer=32, n_head=32, n_embd=4096, **LLAMA | {
        "n_kv_head": None})
    assert model.get_num_params(non_embedding=False) == llama_count(32000, 32, 4096, 32, 32, 128, 11008)
    assert model.get_num_params(non_embedding=False) == 6_738_415_616  # Touvron et al. 2023, as HF counts it


def test_head_size_of_its_own_parameter_count():
    model = meta_model(**BASE | {"head_size": 12})
    d, hs, nh, L = 32, 12, 4, 2
    per_layer = (2 * d  # ln_1
                 + d * 3 * nh * hs + 3 * nh * hs  # c_attn: q, k, v of 4 heads of 12, with bias
                 + nh * hs * d + d  # c_proj from the 48-wide heads back to 32
                 + 2 * d  # ln_2
                 + d * 4 * d + 4 * d + 4 * d * d + d)  # MLP
    expected = VOCAB * d + 32 * d + L * per_layer + 2 * d
    assert model.get_num_params(non_embedding=False) == expected
    assert model.get_num_params() == expected - 32 * d
    assert model.flops_per_token() == 6 * model.get_num_params() + 12 * L * nh * hs * 32


def test_parallel_block_has_one_norm_per_block():
    sequential = meta_model(**GPT2_124M)
    parallel = meta_model(**GPT2_124M | {"parallel_block": True})
    assert all(block.ln_2 is None for block in parallel.transformer.h)
    assert sequential.get_num_params() - parallel.get_num_params() == 12 * 2 * 768


def test_without_learned_positions_there_is_no_wpe():
    for pos_emb in ("rope", "none"):
        model = meta_model(**GPT2_124M | {"pos_emb": pos_emb})
        assert "wpe" not in model.transformer
        n = model.get_num_params(non_embedding=False)
        assert n == 124_439_808 - 1024 * 768
        assert model.get_num_params() == n  # tied and no wpe: nothing to drop


def test_untied_embeddings_are_two_tensors():
    model = build("untied")
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    assert wte is not head and wte.data_ptr() != head.data_ptr()
    assert not torch.equal(wte, head)
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() != sd["transformer.wte.weight"].data_ptr()
    tied = build("gpt2")
    assert tied.get_num_params(False) + VOCAB * 32 == model.get_num_params(False)
    model.crop_vocab(50)  # still two tensors after cropping the padding rows
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.lm_head.weight.shape == model.transformer.wte.weight.shape == (50, 32)


# --- RoPE -----------------------------------------------------------------------------------------------------------


def rotate(x: torch.Tensor, pos: int, base: float = 10000.0) -> torch.Tensor:
    """x (hs,) rotated as at position pos."""
    cos, sin = rope_tables(torch.tensor([pos]), x.numel(), base)
    return apply_rope(x.view(1, 1, 1, -1), cos, sin).view(-1)


def test_apply_rope_preserves_norms():
    x = torch.randn(2, 4, 50, 16, generator=torch.Generator().manual_seed(0))
    for offset in (0, 1000):
        cos, sin = rope_tables(torch.arange(offset, offset + 50), 16, 10000.0)
        y = apply_rope(x, cos, sin)
        torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
        # pairs (i, i + hs/2) are rotated in their plane: each pair keeps its length
        torch.testing.assert_close(y[..., :8].hypot(y[..., 8:]), x[..., :8].hypot(x[..., 8:]), rtol=1e-5, atol=1e-5)
    cos, sin = rope_tables(torch.arange(50), 16, 10000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin)[:, :, 0], x[:, :, 0], rtol=0, atol=0)  # position 0: identity


@pytest.mark.parametrize("base", [10000.0, 100.0])
def test_rope_dot_product_depends_only_on_the_distance(base: float):
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    for i, j in [(3, 7), (9, 2), (5, 5)]:
        dot = rotate(q, i, base) @ rotate(k, j, base)
        for shift in (1, 10, 100):
            torch.testing.assert_close(rotate(q, i + shift, base) @ rotate(k, j + shift, base), dot,
                                       rtol=1e-4, atol=1e-4)
        assert not torch.allclose(rotate(q, i, base) @ rotate(k, j + 1, base), dot, atol=1e-3)  # but on distance


def test_rope_tables_are_float32_in_a_bfloat16_model(monkeypatch: pytest.MonkeyPatch):
    tables: list[torch.Tensor] = []

    def spy(pos: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope_tables(pos, head_size, base)
        tables.extend((cos, sin))
        return cos, sin

    monkeypatch.setattr(model_module, "rope_tables", spy)
    model = build("llama").to(torch.bfloat16)
    with torch.no_grad():
        logits = model(random_ids(2, 32))[0]
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    assert tables and all(t.dtype == torch.float32 for t in tables)
    # float32 angles far into the sequence; bf16 positions would already be off by several tokens there
    pos = torch.arange(4000, 4096)
    cos, sin = rope_tables(pos, 64, 10000.0)
    angles = pos.double()[:, None] * 10000.0 ** (-torch.arange(0, 64, 2).double() / 64)
    for half in (slice(0, 32), slice(32, 64)):  # each angle twice; sin negated for the first half
        torch.testing.assert_close(cos[:, half].double(), angles.cos(), rtol=0, atol=1e-3)
    torch.testing.assert_close(-sin[:, :32].double(), angles.sin(), rtol=0, atol=1e-3)
    torch.testing.assert_close(sin[:, 32:].double(), angles.sin(), rtol=0, atol=1e-3)
    assert (pos.to(torch.bfloat16).long() != pos).any()


def test_apply_rope_keeps_the_dtype():
    x = torch.randn(1, 2, 8, 16).to(torch.bfloat16)
    cos, sin = rope_tables(torch.arange(8), 16, 10000.0)
    y = apply_rope(x, cos, sin)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), apply_rope(x.float(), cos, sin), rtol=1e-2, atol=1e-2)


# --- init -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama", "palm", "relu"])
def test_init_scale(arch: str):
    n_layer = 4
    model = build(arch, seed=1, vocab_size=1024, block_size=256, n_layer=n_layer, n_head=4, n_embd=256)
    proj_std = 0.02 / math.sqrt(2 * n_layer)
    seen = set()
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.count_nonzero(p) == 0, name
        elif ".ln_" in name:
            assert torch.all(p == 1), name
        elif name.endswith("c_proj.weight"):  # attn.c_proj and mlp.c_proj: the residual projections
            seen.add(name.split(".")[-3])
            assert p.std().item() == pytest.approx(proj_std, rel=0.03), name
            assert p.mean().abs().item() < proj_std * 0.02, name
        else:  # wte, lm_head when untied, wpe, c_attn, c_fc
            assert p.std().item() == pytest.approx(0.02, rel=0.03), name
            assert p.mean().abs().item() < 0.02 * 0.02, name
    assert seen == {"attn", "mlp"}


# --- training through train.py, checkpoint, resume, sample.py ------------------------------------------------------

TRAIN_ARCHS = {
    "llama": LLAMA,
    "gpt1": GPT1,
    "palm": PALM,
    "head_size_12_rope": {"head_size": 12, "pos_emb": "rope", "qkv_bias": False},
}


@pytest.mark.parametrize("arch", TRAIN_ARCHS)
def test_training_checkpoint_resume_and_sampling(arch: str, char_data: CharData, tmp_path: Path):
    switches = TRAIN_ARCHS[arch]
    out_dir = tmp_path / "out"
    common = {"n_head": 4, "eval_interval": 30, "eval_at_start": True, **switches}
    history = train.main(tiny_flags(char_data, out_dir, max_iters=30, **common))
    losses = [loss for _, loss in history["train_loss"]]
    assert len(losses) == 30
    assert all(math.isfinite(v) for v in losses)
    start = losses[0]
    end = sum(losses[-5:]) / 5
    assert end < start - 0.5, (start, end)
    (_, _, val0), (_, _, val1) = history["eval"]
    assert val1 < val0 - 0.5, (val0, val1)

    ckpt = checkpoint.load(str(out_dir))
    assert ckpt["iter_num"] == 30
    assert {k: ckpt["model_args"][k] for k in switches} == switches
    model = checkpoint.model_from(ckpt)
    assert (model.lm_head.weight is model.transformer.wte.weight) == switches.get("tie_embeddings", True)

    resumed = train.main(tiny_flags(char_data, out_dir, max_iters=34, init_from="resume", **common))
    assert [it for it, _ in resumed["train_loss"]] == [31, 32, 33, 34]
    assert checkpoint.load(str(out_dir))["iter_num"] == 34

    args = [f"--out_dir={out_dir}", "--start=ROMEO:", "--num_samples=3", "--max_new_tokens=40", "--device=cpu",
            "--stream=False", "--temperature=1.0", "--seed=2"]
    samples = sample.main(args)
    assert len(samples) == 3
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 40 for s in samples)
    assert set("".join(samples)) <= set(char_data.meta["chars"])
    assert sample.main([*args, "--kv_cache=False"]) == samples


def test_resume_is_exact_with_switches(char_data: CharData, tmp_path: Path):
    common = {"n_head": 4, "eval_interval": 3, **LLAMA, "dropout": 0.1, "gradient_accumulation_steps": 2}
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=6, **common))
    out_dir = tmp_path / "resumed"
    first = train.main(tiny_flags(char_data, out_dir, max_iters=3, **common))
    second = train.main(tiny_flags(char_data, out_dir, max_iters=6, init_from="resume", **common))
    assert first["train_loss"] + second["train_loss"] == straight["train_loss"]
    assert second["eval"][-1] == straight["eval"][-1]


# --- settings that do not fit together ------------------------------------------------------------------------------

BAD_CONFIGS = {
    "kv_heads_do_not_divide_heads": ({"n_head": 4, "n_kv_head": 3}, "n_head (4) must be divisible by n_kv_head (3)"),
    "more_kv_heads_than_heads": ({"n_head": 4, "n_kv_head": 8}, "n_head (4) must be divisible by n_kv_head (8)"),
    "odd_head_size_with_rope": ({"head_size": 9, "pos_emb": "rope"}, "rotary positions need an even head size, got 9"),
    "odd_implicit_head_size_with_rope": ({"n_embd": 36, "pos_emb": "rope"}, "even head size, got 9"),
    "post_norm_with_parallel_block": ({"post_norm": True, "parallel_block": True},
                                      "post_norm with parallel_block is not supported"),
    "unknown_norm": ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm, got 'batchnorm'"),
    "unknown_mlp": ({"mlp": "geglu"}, "mlp must be one of gelu, relu, swiglu, got 'geglu'"),
    "unknown_pos_emb": ({"pos_emb": "alibi"}, "pos_emb must be one of learned, rope, none, got 'alibi'"),
    "unknown_attn_pattern": ({"attn_pattern": "strided"}, "attn_pattern must be one of dense, alternating"),
    "window_zero": (BANDED | {"window_size": 0}, "window_size must be in [1, block_size=32], got 0"),
    "window_negative": (BANDED | {"window_size": -4}, "window_size must be in [1, block_size=32], got -4"),
    "window_past_block": (BANDED | {"window_size": 33}, "window_size must be in [1, block_size=32], got 33"),
    "window_without_pattern": ({"window_size": 8}, "window_size and attn_pattern='alternating' go together"),
    "pattern_without_window": (BANDED, "window_size and attn_pattern='alternating' go"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_config_refuses_settings_that_do_not_fit(case: str):
    overrides, message = BAD_CONFIGS[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        GPTConfig(**BASE | overrides)


def test_odd_head_size_is_fine_without_rope():
    assert GPTConfig(**BASE | {"head_size": 9}).head_dim == 9
    assert build("gpt2", head_size=9)(random_ids(1, 8))[0].shape == (1, 8, VOCAB)


def test_train_script_reports_bad_switches_in_one_line(char_data: CharData, tmp_path: Path):
    cases = {
        "n_kv_head": (tiny_flags(char_data, tmp_path / "a", n_head=4, n_kv_head=3),
                      "n_head (4) must be divisible by n_kv_head (3)"),
        "rope_odd_head_size": (tiny_flags(char_data, tmp_path / "b", n_head=4, n_embd=36, pos_emb="rope"),
                               "rotary positions need an even head size, got 9"),
    }
    results = {name: run_main("train.py", args) for name, (args, _) in cases.items()}
    for name, (rc, _, err) in results.items():
        assert (rc, "Traceback" in err) == (2, False), (name, err)
        assert err.strip().splitlines()[-1] == f"error: {cases[name][1]}", name
        assert not (tmp_path / ("a" if name == "n_kv_head" else "b")).exists()  # nothing written


@pytest.mark.parametrize("name", ["gpt1", "llama", "gpt3"])
def test_architecture_configs_train_resume_and_sample(name: str, char_data: CharData, tmp_path: Path):
    """config/train_shakespeare_char_{gpt1,llama,gpt3}.py as shipped, shrunk by flags to run in seconds on a CPU."""
    config = f"config/train_shakespeare_char_{name}.py"
    small = ["--n_layer=2", "--n_embd=48", "--block_size=32", "--batch_size=8", "--eval_iters=2", "--log_interval=1",
             "--device=cpu", "--compile=False", "--dropout=0.0", "--warmup_iters=2", "--always_save_checkpoint=True",
             "--eval_at_start=True",
             f"--data_root={char_data.root}", f"--dataset={char_data.name}", f"--out_dir={tmp_path}",
             *(["--window_size=8"] if name == "gpt3" else [])]  # the band must fit the shrunk context
    history = train.main([config, *small, "--max_iters=30", "--eval_interval=15", "--lr_decay_iters=40"])
    (_, _, val0), *_, (_, _, val1) = history["eval"]
    assert val1 < val0 - 0.5
    ckpt = checkpoint.load(str(tmp_path))
    expected = {"gpt1": {"post_norm": True, "bias": True}, "llama": {"norm": "rmsnorm", "mlp": "swiglu",
                "pos_emb": "rope", "n_kv_head": 2, "bias": False, "tie_embeddings": False},
                "gpt3": {"attn_pattern": "alternating", "window_size": 8}}[name]
    assert {k: ckpt["model_args"][k] for k in expected} == expected
    resumed = train.main([config, *small, "--init_from=resume", "--max_iters=34", "--eval_interval=15",
                          "--lr_decay_iters=40"])
    assert [it for it, _ in resumed["train_loss"]] == [31, 32, 33, 34]
    samples = sample.main([f"--out_dir={tmp_path}", "--device=cpu", "--num_samples=2", "--max_new_tokens=40",
                           "--start=Th"])
    assert len(samples) == 2 and all(s.startswith("Th") and len(s) == 42 for s in samples)
