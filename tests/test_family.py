"""The model family as users name and count it: GPT-3's banded attention against an explicit mask, every preset's
parameter count, the accounting table of `python accounting.py PRESET`, train.py's --preset, --dry_run and
activation checkpointing, and resuming a checkpoint with settings that differ from it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import accounting
import checkpoint
import train
from conftest import TINY_MODEL, CharData, run_main, run_script, tiny_flags, tiny_gpt
from configurator import UserError
from model import GPT, PRESETS, CausalSelfAttention, GPTConfig, banded_attention, resolve_config

# --- GPT-3's locally banded attention ---------------------------------------------------------------------------------


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Dense attention written out, with the causal band mask: query i sees keys i - window + 1 .. i."""
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    i = torch.arange(q.size(2))
    band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return att.masked_fill(~band, float("-inf")).softmax(dim=-1) @ v


@pytest.mark.parametrize("flex", [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=["flex_attention", "sdpa_with_mask"])
def test_banded_attention_equals_dense_attention_with_a_band_mask(flex: bool):
    # flex=True runs FlexAttention compiled for the CPU (CUDA's default), with the block mask the model builds:
    # T not a multiple of its 128-token blocks, a band across several, grouped K/V heads. One case: each window
    # is a compile of its own. T stays above one block: compiled CPU FlexAttention gave wrong outputs in about
    # half of fresh runs at T=40 under torch 2.13 (seen here, GQA or not; never at T=200 or 300; right on CUDA),
    # a torch fault that our CPU default, SDPA with the mask, never meets.
    g = torch.Generator().manual_seed(0)
    cases = [((2, 4, 2, 300, 16), 150)] if flex else [((2, 4, 2, 40, 16), 7), ((1, 4, 4, 300, 16), 150)]
    for (B, nh, nkv, T, hs), window in cases:
        q = torch.randn(B, nh, T, hs, generator=g)
        k, v = torch.randn(B, nkv, T, hs, generator=g), torch.randn(B, nkv, T, hs, generator=g)
        expected = masked_attention(q, k, v, window)
        torch.testing.assert_close(banded_attention(q, k, v, window, flex=flex), expected, rtol=1e-5, atol=1e-5)
        dense = masked_attention(q, k, v, T)
        assert not torch.allclose(expected[:, :, window:], dense[:, :, window:], atol=1e-3)  # the band matters


def test_a_banded_layer_ignores_keys_outside_its_band():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=16, block_size=32, n_layer=2, n_head=4, n_embd=32, attn_pattern="alternating",
                    window_size=4)
    layer = CausalSelfAttention(cfg, window=4).eval()
    x = torch.randn(1, 20, 32)
    x2 = x.clone()
    x2[:, 5] += 1.0  # token 5 is in the band of queries 5..8 only
    with torch.no_grad():
        y, y2 = layer(x), layer(x2)
    changed = (y - y2).abs().amax(dim=-1)[0] > 1e-6
    assert changed.tolist() == [5 <= i <= 8 for i in range(20)]


def test_alternating_pattern_bands_every_other_layer_and_counts_fewer_flops():
    base = {"block_size": 256, "n_layer": 4, "n_head": 4, "n_embd": 64}
    banded = tiny_gpt(**base, attn_pattern="alternating", window_size=32)
    dense = tiny_gpt(**base)
    assert [b.attn.window for b in banded.transformer.h] == [None, 32, None, 32]
    assert [b.attn.window for b in dense.transformer.h] == [None] * 4
    assert banded.get_num_params() == dense.get_num_params()  # a pattern, not parameters
    assert dense.flops_per_token() - banded.flops_per_token() == 12 * 64 * (256 - 32) * 2  # two banded layers


# --- presets and accounting ---------------------------------------------------------------------------------------

PRESET_COUNTS = {  # exact: OpenAI's GPT-1 and GPT-2 as HF counts them (tied head)
    "gpt1": 116_534_784, "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200}
GPT3_NOMINAL = {"gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9,
                "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9, "gpt3-175b": 175e9}  # Brown et al. 2020


def meta_count(config: GPTConfig) -> int:
    with torch.device("meta"):
        return GPT(config).get_num_params(non_embedding=False)


@pytest.mark.parametrize("name", [*PRESET_COUNTS, *GPT3_NOMINAL])
def test_preset_parameter_counts(name: str):
    n = meta_count(resolve_config(name))
    if name in PRESET_COUNTS:
        assert n == PRESET_COUNTS[name]
    else:
        assert abs(n / GPT3_NOMINAL[name] - 1) < 0.03, f"{name}: {n:,}"


def test_gpt3_presets_follow_the_paper_table():
    for name, (L, d, heads, d_head) in {"gpt3-small": (12, 768, 12, 64), "gpt3-xl": (24, 2048, 16, 128),
                                        "gpt3-13b": (40, 5140, 40, 128), "gpt3-175b": (96, 12288, 96, 128)}.items():
        c = resolve_config(name)
        assert (c.n_layer, c.n_embd, c.n_head, c.head_dim, c.block_size) == (L, d, heads, d_head, 2048), name
    assert meta_count(resolve_config("gpt3-xl", n_head=24, head_size=128)) == 1_517_123_584  # the table read literally


def test_llama_preset_and_overrides():
    c = resolve_config("llama-small", n_layer=2, window_size=64, attn_pattern="alternating")
    assert (c.norm, c.mlp, c.pos_emb, c.n_kv_head, c.bias, c.tie_embeddings) == ("rmsnorm", "swiglu", "rope", 4,
                                                                                  False, False)
    assert (c.n_layer, c.window_size, c.n_embd) == (2, 64, 768)
    assert set(PRESETS) >= {"gpt1", "gpt2", "gpt2-xl", "gpt3-small", "gpt3-175b", "llama-small"}


def test_unknown_preset_names_the_nearest():
    with pytest.raises(ValueError, match=r"unknown preset 'gpt3-xxl' \(did you mean 'gpt3-xl'\?\)"):
        resolve_config("gpt3-xxl")


# GPT-2 small by hand (Radford et al. 2019; HF's GPT2Model): vocabulary 50257, context 1024, 768 wide, 12 layers,
# biases everywhere, the head tied to the token embedding
GPT2_PARTS = {"token embedding": 50257 * 768, "position embedding": 1024 * 768,
              "attention": 12 * (768 * 3 * 768 + 3 * 768 + 768 * 768 + 768),  # c_attn, c_proj
              "MLP": 12 * (768 * 4 * 768 + 4 * 768 + 4 * 768 * 768 + 768),  # c_fc, c_proj
              "norms": (2 * 12 + 1) * 2 * 768}  # ln_1, ln_2 per layer and ln_f: weight and bias


def table_counts(out: str) -> dict[str, int]:
    """The 'label   1,234' lines of the accounting table."""
    rows = [line.rsplit(None, 1) for line in out.splitlines() if line[-1:].isdigit() and "," in line.split()[-1]]
    return {label.strip(): int(n.replace(",", "")) for label, n in rows if n.replace(",", "").isdigit()}


def test_accounting_table_counts_gpt2_by_component():
    counts = table_counts(accounting.main(["gpt2"]))
    assert {k: counts[k] for k in GPT2_PARTS} == GPT2_PARTS
    assert counts["total"] == sum(GPT2_PARTS.values()) == 124_439_808  # HF's count of OpenAI's gpt2
    assert counts["non-embedding"] == counts["total"] - GPT2_PARTS["position embedding"]


@pytest.mark.parametrize("argv, expected", [
    (["gpt1"], ["116,534,784"]),  # HF's openai-gpt
    # "Build a Large Language Model (From Scratch)", ch. 4: its GPTModel without weight tying, no qkv bias
    (["gpt2", "--qkv_bias=False", "--tie_embeddings=False"], ["163,009,536", "621.83 MB in float32"]),
])
def test_accounting_table_published_counts(argv: list[str], expected: list[str]):
    out = accounting.main(argv)
    assert all(line in out for line in expected), out
    for label in ("token embedding", "position embedding", "attention", "MLP", "norms", "head", "total",
                  "training FLOPs per token", "fp32 (or bf16 AMP)"):
        assert label in out


def test_accounting_table_of_gpt3_175b_costs_no_memory():
    total = table_counts(accounting.main(["gpt3-175b"]))["total"]
    assert abs(total / 175e9 - 1) < 0.003  # Brown et al.: 175.0B


def test_dry_run_of_a_config_file_counts_the_model_train_saves(char_data: CharData, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]):
    config = "config/train_shakespeare_char_llama.py"
    flags = [f"--data_root={char_data.root}", f"--dataset={char_data.name}", "--device=cpu"]  # 62 chars -> 64
    train.main([config, *flags, "--dry_run=True"])
    counted = table_counts(capsys.readouterr().out)["total"]
    out_dir = tmp_path / "out"  # one real iteration of the same config: the checkpoint holds what was trained
    train.main([config, *flags, f"--out_dir={out_dir}", "--compile=False", "--dtype=float32", "--batch_size=1",
                "--max_iters=1", "--eval_iters=1", "--eval_interval=1", "--always_save_checkpoint=True"])
    saved = checkpoint.load(str(out_dir))["model"]
    assert counted == sum(t.numel() for t in saved.values())  # untied: every tensor is its own parameter
    assert saved["transformer.wte.weight"].shape[0] == 64


@pytest.mark.slow
def test_accounting_command_line():
    rc, out, err = run_script("accounting.py", ["gpt3-small", "--attn_pattern=alternating", "--window_size=256"])
    assert rc == 0, err
    assert f"{124_439_808 + 1024 * 768:,}" in out  # GPT-2 small with 2048 learned positions
    assert "attn_pattern='alternating'" in out
    cases = ((["gpt5"], "unknown preset 'gpt5' (did you mean"), ([], "name a preset"),
             (["gpt2", "--window_size=0", "--attn_pattern=alternating"], "window_size must be in"),
             (["config/train_gpt2.py"], "account it with python train.py config/train_gpt2.py --dry_run=True"))
    for argv, message in cases:
        rc, _, err = run_main("accounting.py", argv)
        assert rc == 2 and "Traceback" not in err and message in err.strip().splitlines()[-1], err


# --- train.py: dry run, activation checkpointing, resuming with other settings ------------------------------------


def test_dry_run_needs_no_data_and_no_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out_dir = tmp_path / "out"
    result = train.main(["--preset=gpt3-175b", "--dry_run=True", "--device=cpu", f"--data_root={tmp_path}",
                         "--batch_size=1", "--gradient_accumulation_steps=8", f"--out_dir={out_dir}"])
    printed = capsys.readouterr().out
    assert result == {"train_loss": [], "eval": []}
    assert f"{meta_count(resolve_config('gpt3-175b', vocab_size=50304)):,}" in printed  # GPT-2's vocab, padded
    assert "tokens per iteration: 16,384 = batch_size 1 x block_size 2048 x gradient_accumulation_steps 8" in printed
    assert "dry run: nothing trained" in printed and not out_dir.exists()


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny_gpt(block_size=16, n_layer=3).train()
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.activation_checkpointing = checkpointing
        model(x, y)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_resume_refuses_settings_that_differ_from_the_checkpoint(char_data: CharData, tmp_path: Path):
    flags = tiny_flags(char_data, tmp_path, max_iters=2, eval_interval=2)
    train.main(flags)
    args = checkpoint.load(str(tmp_path))["model_args"]
    with pytest.raises(UserError, match=r"the checkpoint in .* has norm='layernorm', the settings ask for "
                                        r"norm='rmsnorm'"):
        train.main([*flags, "--init_from=resume", "--norm=rmsnorm", "--max_iters=3"])
    with pytest.raises(UserError, match=r"has n_layer=2, the settings ask for n_layer=3"):
        train.main([*flags, "--init_from=resume", "--n_layer=3", "--max_iters=3"])
    unshaped = [f for f in flags if f[2:].partition("=")[0] not in TINY_MODEL]  # no model setting given
    refused = r"has block_size=32, the settings ask for block_size=1024 \(from preset 'gpt2'\)"
    with pytest.raises(UserError, match=refused):
        train.main([*unshaped, "--init_from=resume", "--preset=gpt2", "--max_iters=3"])  # the whole preset counts
    with pytest.raises(UserError, match=r"unknown preset 'gtp2' \(did you mean 'gpt2'\?\)"):
        train.main([*flags, "--init_from=resume", "--preset=gtp2", "--max_iters=3"])
    resumed = train.main([*flags, "--init_from=resume", "--max_iters=3", "--dropout=0.1"])  # dropout may change
    assert [it for it, _ in resumed["train_loss"]] == [3]
    assert checkpoint.load(str(tmp_path))["model_args"] == args | {"dropout": 0.1}
