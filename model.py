"""A GPT language model: GPT-2 by default, with parameter names that map one to one onto HF's GPT-2, and the
switches of its family: GPT-1's post-norm, RMSNorm, SwiGLU, rotary positions, grouped-query attention, a head
size of its own, GPT-3's alternating dense and locally banded attention, PaLM's parallel block, untied embeddings;
and the tricks of recent small-model training: query-key normalisation, a squared-ReLU MLP, soft-capped logits,
zero-initialised residual projections, a normalised embedding, an attention scale of one's own, U-net skips,
value embeddings and x0 mixing.

Read top to bottom in GPT-2's order: the config and its presets, norms and positions, attention, MLP, Block, head, GPT.
Decoding with a KV cache lives in generate.py, the optimizers in optim.py; this file holds the network only and
imports no project module.

References: Radford et al. 2018/2019 (GPT-1, GPT-2: pre-LayerNorm, residual projections scaled by 1/sqrt(2*n_layer)),
Vaswani et al. 2017 (attention), Zhang & Sennrich 2019 (RMSNorm), Shazeer 2020 (SwiGLU), Su et al. 2021 (RoPE),
Shazeer 2019 / Ainslie et al. 2023 (multi-/grouped-query attention), Brown et al. 2020 and Child et al. 2019
(GPT-3's banded layers, from the Sparse Transformer), Chowdhery et al. 2022 (PaLM: parallel
blocks, no biases), Kaplan et al. 2020 / PaLM appendix B (FLOPs per token for MFU), Henry et al. 2020 and
Dehghani et al. 2023 (query-key normalisation), So et al. 2021 (Primer: squared ReLU), Gemma Team 2024 (Gemma 2:
soft-capped logits), Jordan et al. 2024 (modded-nanogpt: zero-initialised projections, soft caps, ReLU^2, the
embedding's norm, U-net skips, value embeddings, x0 mixing).
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257  # GPT-2's BPE; train.py pads to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and norms, as in GPT-2
    qkv_bias: bool | None = None  # bias of the q/k/v projection alone; None: as `bias`
    n_kv_head: int | None = None  # key/value heads: None = n_head; 1 = multi-query; in between = grouped-query
    head_size: int | None = None  # None: n_embd // n_head (GPT-3 13B has heads of their own width)
    attn_pattern: str = "dense"  # dense | alternating: GPT-3's, every other layer (2nd, 4th, ...) locally banded
    window_size: int | None = None  # banded layers: a token attends to itself and the window_size - 1 before it;
    # None with attn_pattern="alternating": block_size // 4 (the paper gives no width)
    norm: str = "layernorm"  # layernorm | rmsnorm
    post_norm: bool = False  # normalise after each residual add (GPT-1, the original Transformer); no final norm
    mlp: str = "gelu"  # gelu | relu | relu2 (squared ReLU) | swiglu
    mlp_hidden: int | None = None  # None: 4 * n_embd; for swiglu 2/3 of that, rounded up to a multiple of 256
    pos_emb: str = "learned"  # learned | rope | none
    rope_base: float = 10000.0
    parallel_block: bool = False  # PaLM: x + attn(norm(x)) + mlp(norm(x)), one norm per block
    tie_embeddings: bool = True  # lm_head shares the token embedding (GPT-2); False: a matrix of its own
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (a learned gain per head dimension)
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap) (Gemma 2); None: as they are
    zero_init_proj: bool = False  # the residual projections (c_proj) start at zero, not GPT-2's scaled normal
    zero_init_head: bool = False  # an untied output head starts at zero: every first prediction uniform
    embed_norm: bool = False  # normalise the token embeddings (the model's norm) before the first block
    attn_scale: float | None = None  # the attention scores' scale; None: 1 / sqrt(head size)
    unet_skips: bool = False  # U-net skips: the last n_layer // 2 blocks each add the output of its mirror among the
    # first n_layer // 2 (block i's output goes into block n_layer - 1 - i), times a learned weight that starts at 1
    value_embeds: int = 0  # k > 0: k embedding tables, each adding a vector per token to the attention values of
    # block i and of its mirror n_layer - 1 - i, for i < k (at most n_layer // 2)
    x0_mix: bool = False  # each block's input is a * x + b * x0, x0 the first block's input, a and b learned per
    # block (starting at 1 and 0: the model as without it)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.head_size is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}), or set head_size")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_dim}")
        choices = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "relu", "relu2", "swiglu"),
                   "pos_emb": ("learned", "rope", "none"), "attn_pattern": ("dense", "alternating")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got '{getattr(self, name)}'")
        self._set_window()
        if self.post_norm and self.parallel_block:
            raise ValueError("post_norm with parallel_block is not supported: parallel blocks are pre-norm")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self._check_tricks()

    def _check_tricks(self) -> None:
        """The switches of recent small-model training (soft cap, attention scale, head init, value embeddings)."""
        if self.logit_softcap is not None and not 0.0 < self.logit_softcap < math.inf:
            raise ValueError(f"logit_softcap must be a positive number (or None), got {self.logit_softcap}")
        if self.attn_scale is not None and not 0.0 < self.attn_scale < math.inf:
            raise ValueError(f"attn_scale must be a positive number (or None), got {self.attn_scale}")
        if self.zero_init_head and self.tie_embeddings:
            raise ValueError("zero_init_head needs tie_embeddings=False: a tied head is the token embedding, which "
                             "cannot start at zero")
        if self.unet_skips and self.n_layer < 2:
            raise ValueError("unet_skips needs at least 2 layers: a block's mirror is another block")
        if not 0 <= self.value_embeds <= self.n_layer // 2:
            raise ValueError(f"value_embeds must be in [0, n_layer // 2 = {self.n_layer // 2}], "
                             f"got {self.value_embeds}")

    def _set_window(self) -> None:
        """The band of attn_pattern='alternating': block_size // 4 unless given; refused for a dense pattern."""
        if self.attn_pattern == "alternating" and self.window_size is None:
            self.window_size = max(1, self.block_size // 4)
        if self.attn_pattern != "alternating" and self.window_size is not None:
            raise ValueError("window_size is the band of attn_pattern='alternating': set that too, or drop it")
        if self.window_size is not None and not 1 <= self.window_size <= self.block_size:
            raise ValueError(f"window_size must be in [1, block_size={self.block_size}], got {self.window_size}")

    @property
    def head_dim(self) -> int:
        """The width of each attention head in use: the head_size setting, else n_embd // n_head."""
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def value_table(self, layer: int) -> int | None:
        """The value-embedding table a layer adds to its values (value_embeds), or None."""
        mirror = min(layer, self.n_layer - 1 - layer)
        return mirror if mirror < self.value_embeds else None

    def band(self, layer: int) -> int | None:
        """The band of a layer's attention: window_size for GPT-3's banded layers, None for dense ones."""
        return self.window_size if self.attn_pattern == "alternating" and layer % 2 else None

    @property
    def hidden(self) -> int:
        """The MLP's width."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # 2/3 of 4 * n_embd keeps the parameter count of a 4x GELU MLP (LLaMA)
            return round_up(8 * self.n_embd // 3, 256)
        return 4 * self.n_embd


# Named models. GPT-3 rows: Brown et al. 2020, table 2.1 (context 2048, d_head 128 for XL and 13B, whose 40 heads
# are 5120 wide in a 5140-wide model). The table's XL row, 24 heads of 128 in a 2048-wide model, would count
# 1.52B parameters, not its 1.3B; 16 heads of 128 (attention as wide as d_model, as GPT-Neo 1.3B reads it) do.
_GPT3 = {"block_size": 2048}
PRESETS: dict[str, dict[str, Any]] = {
    "gpt1": {"vocab_size": 40478, "block_size": 512, "post_norm": True},  # Radford et al. 2018
    "gpt2": {},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
    "gpt3-small": {**_GPT3, "n_layer": 12, "n_head": 12, "n_embd": 768},
    "gpt3-medium": {**_GPT3, "n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt3-large": {**_GPT3, "n_layer": 24, "n_head": 16, "n_embd": 1536},
    "gpt3-xl": {**_GPT3, "n_layer": 24, "n_head": 16, "n_embd": 2048},
    "gpt3-2.7b": {**_GPT3, "n_layer": 32, "n_head": 32, "n_embd": 2560},
    "gpt3-6.7b": {**_GPT3, "n_layer": 32, "n_head": 32, "n_embd": 4096},
    "gpt3-13b": {**_GPT3, "n_layer": 40, "n_head": 40, "n_embd": 5140, "head_size": 128},
    "gpt3-175b": {**_GPT3, "n_layer": 96, "n_head": 96, "n_embd": 12288},
    # LLaMA's recipe (Touvron et al. 2023) at GPT-2 small's size, with grouped-query attention (LLaMA 2)
    "llama-small": {"vocab_size": 32000, "block_size": 2048, "norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope",
                    "n_kv_head": 4, "bias": False, "tie_embeddings": False},
}
NO_PRESET = {"bias": False}  # without a preset: GPT-2 124M without biases, nanoGPT's training default


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least n."""
    return -(-n // multiple) * multiple


def resolve_config(preset: str = "", **settings: Any) -> GPTConfig:
    """A named preset ("" for none: GPT-2 124M without biases) with every GPTConfig field given in settings laid
    over it; a setting of None is not given. Raises ValueError for an unknown preset (naming the nearest), an
    unknown field, or a value GPTConfig refuses."""
    if preset and preset not in PRESETS:
        nearest = difflib.get_close_matches(preset, PRESETS, n=1, cutoff=0.0)
        raise ValueError(f"unknown preset '{preset}' (did you mean '{nearest[0]}'?)")
    unknown = set(settings) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"not a model setting: {', '.join(sorted(unknown))}")
    values = (PRESETS[preset] if preset else NO_PRESET) | {k: v for k, v in settings.items() if v is not None}
    return GPTConfig(**values)


@dataclass
class ModelSettings:
    """The model settings of a script (train.py's and bench.py's settings inherit them): a preset, and any GPTConfig
    field laid over it. A field left at None is the preset's, else GPTConfig's default (GPT-2 124M, here without
    biases). The vocabulary is the data's, padded to vocab_multiple."""

    preset: str = ""  # a named model (model.PRESETS): gpt2, gpt2-xl, gpt3-xl, llama-small, ...
    block_size: int | None = None  # context length; None: 1024
    n_layer: int | None = None  # transformer blocks
    n_head: int | None = None  # attention heads
    n_embd: int | None = None  # model width
    dropout: float = 0.0  # dropout probability while training (0.1+ for finetuning)
    bias: bool | None = None  # biases in linear layers and norms; None: the preset's, else False (nanoGPT's default)
    qkv_bias: bool | None = None  # bias of the q/k/v projection alone; None: as bias
    n_kv_head: int | None = None  # key/value heads; None: n_head; 1: multi-query; in between: grouped-query
    head_size: int | None = None  # width of each attention head; None: n_embd // n_head
    attn_pattern: str | None = None  # dense | alternating (GPT-3: every other layer attends to a band)
    window_size: int | None = None  # the band of GPT-3's banded layers; None: block_size // 4
    norm: str | None = None  # layernorm | rmsnorm
    post_norm: bool | None = None  # GPT-1's norm placement: after each residual add
    mlp: str | None = None  # gelu | relu | relu2 (squared ReLU) | swiglu
    mlp_hidden: int | None = None  # the MLP's width; None: 4 * n_embd (swiglu: 2/3 of that, rounded up to 256)
    pos_emb: str | None = None  # learned | rope | none
    rope_base: float | None = None  # rotary positions: the base of the angle frequencies (10000)
    parallel_block: bool | None = None  # PaLM's parallel attention + MLP
    tie_embeddings: bool | None = None  # lm_head shares the token embedding (GPT-2); False: a matrix of its own
    qk_norm: bool | None = None  # RMS-normalise each head's queries and keys before attention
    logit_softcap: float | None = None  # cap the logits softly: cap * tanh(logits / cap) (Gemma 2 uses 30)
    zero_init_proj: bool | None = None  # the residual projections start at zero: each block starts as the identity
    zero_init_head: bool | None = None  # an untied output head starts at zero: every first prediction uniform
    embed_norm: bool | None = None  # normalise the token embeddings before the first block
    attn_scale: float | None = None  # the attention scores' scale; None: 1 / sqrt(head size)
    unet_skips: bool | None = None  # U-net skips: the last n_layer // 2 blocks add their mirror's output, weighted
    value_embeds: int | None = None  # k embedding tables added to the values of the first k blocks and their mirrors
    x0_mix: bool | None = None  # each block's input a * x + b * x0 (x0: the first block's input), a and b learned
    vocab_multiple: int = 64  # pad the vocabulary to a multiple of this (faster matmuls); 1: no padding

    def model_fields(self) -> dict[str, Any]:
        """The GPTConfig fields given (not None), to be laid over the preset."""
        names = [name for name in GPTConfig.__dataclass_fields__ if name != "vocab_size"]
        return {name: value for name in names if (value := getattr(self, name)) is not None}

    def resolve(self, vocab_size: int | None = None) -> GPTConfig:
        """The model these settings describe, for data of vocab_size token ids (None: the preset's vocabulary,
        unpadded). Raises ValueError as resolve_config does."""
        vocab = None if vocab_size is None else round_up(vocab_size, self.vocab_multiple)
        return resolve_config(self.preset, **self.model_fields(), vocab_size=vocab)

    def conflicts(self, model_args: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(field, the model's value, these settings' value) for each setting that would build another model than
        the one model_args describe: every field a preset resolves to, and every field given. The vocabulary,
        dropout (which changes no weight), zero_init_proj and zero_init_head (inits, which a loaded model has left
        behind) may differ; a field model_args lack (saved before it existed) has its default. Raises ValueError
        as resolve_config does."""
        asked = asdict(self.resolve()) if self.preset else self.model_fields()
        fields = GPTConfig.__dataclass_fields__
        have = {k: model_args.get(k, fields[k].default) for k in asked}
        return [(k, have[k], v) for k, v in asked.items()
                if k not in ("vocab_size", "dropout", "zero_init_proj", "zero_init_head") and have[k] != v]


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":  # x / rms(x) * weight: LayerNorm without centring or bias (LLaMA)
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)


def rope_tables(pos: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, head_dim) of the rotation angles pos * base^(-2i / head_dim) (Su et al. 2021), each angle
    twice, for dimensions i and i + head_dim/2, with the sign of sin for the first half negated (as apply_rope
    uses them); in float32 whatever the model's dtype: rounded angles drift further the later the position."""
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device) / head_dim)
    angles = torch.outer(pos.float(), freqs)  # (T, head_dim / 2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., hd) pairwise: dimension i with i + hd/2 (the "rotate half" layout of GPT-NeoX/LLaMA), by the
    angles of its position: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin); cos, sin from rope_tables, shaped to
    broadcast over x: (T, hd) for x (B, nh, T, hd), (T, 1, hd) for x (B, T, nh, hd)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((x2, x1), dim=-1) * sin).type_as(x)  # fewer eager kernels than a rotate_half


class KVCache(nn.Module):
    """Keys and values of one attention layer for every position of the window, preallocated so that shapes stay
    static (torch.compile, CUDA graphs) and filled in place as tokens are processed. generate.py attaches one to
    every layer."""

    def __init__(self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        for name in ("k", "v"):  # two buffers, written by index_put_: the compiler turns each write into a
            # scatter of the new positions (one buffer written through views cost a copy of all of it per step)
            self.register_buffer(name, torch.zeros(batch_size, n_kv_head, max_len, head_dim, dtype=dtype,
                                                   device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nkv, T, hd) at positions input_pos (T,); return all keys and all values, each
        (B, nkv, max_len, hd). Under autocast (samples during training) k and v come in the autocast dtype while
        the cache has the weights' dtype: they are stored in the cache's."""
        self.k[:, :, input_pos] = k.to(self.k.dtype)
        self.v[:, :, input_pos] = v.to(self.v.dtype)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, band: int | None = None) -> None:
        super().__init__()
        self.band = band  # None: dense; else a token sees itself and the band - 1 tokens before it (GPT-3)
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
        # q, k, v in one matmul: n_head query heads, n_kv_head key and value heads
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=qkv_bias)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # query-key normalisation (Henry et al. 2020; Dehghani et al. 2023, whose ViT-22B it kept stable), in its
        # RMSNorm form: each head's q and k RMS-normalised, with a gain per head dimension that every head shares,
        # so that the attention logits cannot grow with the weights
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-5) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-5) if config.qk_norm else None
        self.scale = config.attn_scale  # None: SDPA's own, 1 / sqrt(head_dim)
        self.kv_cache: KVCache | None = None  # generation only (generate.setup_cache)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                input_pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                value_embed: torch.Tensor | None = None) -> torch.Tensor:
        """value_embed (B, T, nkv * hd): added to the values (value_embeds), before the cache stores them."""
        B, T, _ = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([nh * hd, nkv * hd, nkv * hd], dim=2)
        if value_embed is not None:  # in the values' dtype (bfloat16 under autocast), as SDPA wants q, k, v alike
            v = v + value_embed.to(v.dtype)
        # q and k are normalised and rotated as the projection wrote them, (B, T, heads, hd), each head's vector
        # contiguous, and only then seen as (B, heads, T, hd): the compiled kernels read and write whole rows
        q = q.view(B, T, nh, hd)
        k = k.view(B, T, nkv, hd)
        if self.q_norm is not None:  # before the rotation, and before the cache: every path sees normalised keys
            # in float32, as the gains are: under autocast q and k are bfloat16, and RMSNorm on mixed dtypes
            # takes torch's unfused path (with a warning) and returns float32
            q = self.q_norm(q.float()).type_as(q)
            k = self.k_norm(k.float()).type_as(k)
        if rope is not None:  # rotary positions turn q.k into a function of the distance between tokens
            cos, sin = (t.unsqueeze(-2) for t in rope)  # (T, 1, hd): every head of a position turns alike
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, nkv, hd).transpose(1, 2)  # (B, heads, T, hd)
        dropout = self.dropout if self.training else 0.0
        if input_pos is None and self.band is None:  # flash / memory-efficient kernels where the device has
            # them, the math fallback on the CPU
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=self.scale,
                                               enable_gqa=nkv != nh)
        elif input_pos is None:
            y = banded_attention(q, k, v, self.band, dropout, scale=self.scale)
        else:
            y = self.cached_attention(q, k, v, input_pos, mask)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hd)  # (B, T, nh * hd): the heads side by side
        return self.resid_dropout(self.c_proj(y))

    def cached_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
        """Generation: write k, v (B, nkv, T, hd) into the cache at input_pos (T,), then attend over the first
        `span` cached positions, span = mask.size(-1); mask (T, span) is added to the scores: 0 where a key is
        visible, -inf for the future (and stale entries)."""
        B, nh, T, hd = q.shape
        nkv, group = self.n_kv_head, nh // self.n_kv_head
        span = mask.size(-1)
        k, v = self.kv_cache.update(input_pos, k, v)  # (B, nkv, max_len, hd)
        k = k[:, :, :span].flatten(0, 1)  # (B * nkv, span, hd), a view
        v = v[:, :, :span].flatten(0, 1)
        mask = mask.to(q.dtype)
        if self.band:  # and of those, the band
            mask = mask.masked_fill(input_pos[:, None] - torch.arange(span, device=mask.device) >= self.band,
                                    float("-inf"))
        # three kernels rather than SDPA's fused one, whose fixed cost dominates at T=1: the scores, scaled and
        # masked in one baddbmm, their softmax, the values. The `group` query heads that share a key/value head are
        # rows of one matrix: (B * nkv, group * T, hd).
        qg = q.reshape(B * nkv, group * T, hd)
        att = torch.baddbmm(mask.repeat(group, 1) if group > 1 else mask, qg, k.transpose(1, 2),
                            alpha=self.scale or 1.0 / math.sqrt(hd))  # (B * nkv, group * T, span)
        return (att.softmax(dim=-1) @ v).view(B, nh, T, hd)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, band: int, dropout_p: float = 0.0,
                     flex: bool | None = None, scale: float | None = None) -> torch.Tensor:
    """Causal attention in which query i sees keys i - band + 1 .. i; q (B, nh, T, hd), k, v (B, nkv, T, hd).
    With flex, FlexAttention skips the key blocks outside the band, so the cost grows with T * band rather than
    T^2. By default flex trains on CUDA; inference (evaluation and generation's no-cache reference path, where
    every length would be a recompile of the kernel) and dropout (flex has none) take SDPA with the explicit
    (T, T) mask instead. scale: the scores' scale, None for 1 / sqrt(head size)."""
    T = q.size(-2)
    gqa = k.size(1) != q.size(1)
    if flex is None:
        flex = q.is_cuda and torch.is_grad_enabled()
    if flex and not dropout_p:
        attend = flex_attention if torch.compiler.is_compiling() else compiled_flex_attention()
        return attend(q, k, v, block_mask=band_block_mask(T, band, q.device), scale=scale, enable_gqa=gqa)
    i = torch.arange(T, device=q.device)
    visible = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < band)  # (T, T): key j visible to query i
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout_p, scale=scale,
                                          enable_gqa=gqa)


@functools.cache
def compiled_flex_attention() -> Any:  # flex_attention is a fused kernel only when compiled
    return torch.compile(flex_attention)


@functools.lru_cache(maxsize=16)  # under torch.compile the cache is bypassed and the mask built in the graph
def band_block_mask(T: int, band: int, device: torch.device) -> Any:
    return create_block_mask(lambda b, h, i, j: (j <= i) & (i - j < band), None, None, T, T, device=device)


class ReLUSquared(nn.Module):
    """relu(x)^2, Primer's activation (So et al. 2021), as modded-nanogpt's MLP uses it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"  # silu(x W) * (x V): c_fc holds W and V side by side
        self.c_fc = nn.Linear(config.n_embd, (2 if self.swiglu else 1) * config.hidden, bias=config.bias)
        if config.mlp == "relu":
            self.act = nn.ReLU()
        elif config.mlp == "relu2":
            self.act = ReLUSquared()
        elif self.swiglu:
            self.act = nn.SiLU()
        else:
            self.act = nn.GELU(approximate="tanh")  # GPT-2's gelu is the tanh approximation
        self.c_proj = nn.Linear(config.hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, band: int | None = None) -> None:
        super().__init__()
        self.post_norm = config.post_norm
        self.parallel = config.parallel_block
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, band)
        self.ln_2 = None if config.parallel_block else make_norm(config)  # a parallel block shares ln_1
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                input_pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                value_embed: torch.Tensor | None = None) -> torch.Tensor:
        if self.parallel:  # PaLM
            h = self.ln_1(x)
            return x + self.attn(h, rope, input_pos, mask, value_embed) + self.mlp(h)
        if self.post_norm:  # GPT-1
            x = self.ln_1(x + self.attn(x, rope, input_pos, mask, value_embed))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), rope, input_pos, mask, value_embed)  # GPT-2: pre-norm
        return x + self.mlp(self.ln_2(x))


class LMHead(nn.Linear):
    """The output head: hidden states (..., C) -> logits (..., vocab), soft-capped to (-cap, cap) as
    cap * tanh(logits / cap) when softcap is set (Gemma 2; modded-nanogpt). The cap lives here, not in GPT.forward,
    so that every caller of lm_head (generate.py's prefill too) gets the same logits."""

    def __init__(self, in_features: int, out_features: int, softcap: float | None = None) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.softcap = softcap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.softcap is None:
            return logits
        return self.softcap * torch.tanh(logits / self.softcap)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        modules = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if config.embed_norm:
            modules["ln_e"] = make_norm(config)
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        if config.value_embeds:  # each as wide as the values: n_kv_head heads
            modules["ve"] = nn.ModuleList(nn.Embedding(config.vocab_size, config.kv_heads * config.head_dim)
                                          for _ in range(config.value_embeds))
        modules["drop"] = nn.Dropout(config.dropout)
        modules["h"] = nn.ModuleList([Block(config, config.band(i)) for i in range(config.n_layer)])
        if not config.post_norm:  # post-norm blocks end normalised already
            modules["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(modules)
        # U-net skips (modded-nanogpt): the weight of each mirror's output, all 1 at first
        self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2)) if config.unet_skips else None
        # x0 mixing (modded-nanogpt): per block, the weight of the residual stream and of the first block's input
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer)) if config.x0_mix else None
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer)) if config.x0_mix else None
        self.lm_head = LMHead(config.n_embd, config.vocab_size, config.logit_softcap)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017), as GPT-2 does
        self.activation_checkpointing = False  # training: keep each block's input, recompute its activations
        if config.pos_emb == "rope":  # computed once: a compiled model would otherwise recompute every angle's
            # cosine in each layer's kernels; not saved (persistent=False), as they follow from the config
            cos, sin = rope_tables(torch.arange(config.block_size), config.head_dim, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") and config.zero_init_proj:  # modded-nanogpt: every residual branch
                torch.nn.init.zeros_(p)  # starts at zero, so a (pre-norm) block starts as the identity
            elif name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init_head:  # modded-nanogpt: the logits start at zero, the loss at log(vocab)
            torch.nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, input_pos: torch.Tensor | None = None,
                span: int | None = None, return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab), soft-capped if logit_softcap is set (LMHead), and the mean
        cross-entropy of those if targets (B, T) are given (targets of -1 are ignored). input_pos and span:
        generation through the KV cache, see hidden_states. return_logits=False (with targets): the logits come
        back as None; a compiled step then need not write the whole (B, T, vocab) tensor out, which with a
        soft-cap is a second one beside the head's output."""
        logits = self.lm_head(self.hidden_states(idx, input_pos, span))  # (B, T, vocab)
        loss = None
        if targets is not None:
            # from the logits as they are (bf16 under autocast): a float32 copy of a (B*T, vocab) tensor and its
            # gradient are a large share of an eager step; compiled, the fused kernel works in float32 regardless
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            if not return_logits:
                return None, loss
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None,
                      span: int | None = None) -> torch.Tensor:
        """idx (B, T) -> the final hidden states (B, T, C), the input of lm_head. With input_pos (T,), the
        positions of idx in the window, attention extends the KV cache (generate.setup_cache) and reads its
        first `span` positions (None: all of them; span must lie past every input_pos)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        x, rope, mask = self.embed(idx, input_pos, span)
        x = self.run_blocks(x, idx, rope, input_pos, mask)
        if "ln_f" in self.transformer:
            x = self.transformer.ln_f(x)
        return x

    def embed(self, idx: torch.Tensor, input_pos: torch.Tensor | None, span: int | None
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """The first block's input (B, T, C): the token embeddings (normalised with embed_norm), plus learned
        positions; and what attention needs of the positions: the rotary tables, and through the cache the mask
        (T, span) added to its scores, 0 where a key is visible and -inf where it is not."""
        cfg = self.config
        T = idx.size(1)
        x = self.transformer.wte(idx)  # (B, T, C)
        if "ln_e" in self.transformer:
            x = self.transformer.ln_e(x)
        mask = None
        if input_pos is None:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        else:
            pos = input_pos
            keys = torch.arange(span or cfg.block_size, device=idx.device)
            hidden = keys[None, :] > input_pos[:, None]  # (T, span): cached key j is not visible to query i
            mask = torch.zeros(hidden.shape, dtype=x.dtype, device=idx.device).masked_fill_(hidden, float("-inf"))
        rope = None
        if cfg.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        elif cfg.pos_emb == "rope":
            rope = (self.rope_cos[:T], self.rope_sin[:T]) if input_pos is None else (self.rope_cos[pos],
                                                                                     self.rope_sin[pos])
        return self.transformer.drop(x), rope, mask

    def run_blocks(self, x: torch.Tensor, idx: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                   input_pos: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """The blocks in turn from their input x (B, T, C), joined as the switches say: U-net skips, x0 mixing,
        and the value embeddings of the tokens idx."""
        cfg = self.config
        tables = [table(idx) for table in self.transformer.ve] if "ve" in self.transformer else []
        x0 = x
        skips = []  # U-net: the first half's outputs, for their mirrors in the second half
        for i, block in enumerate(self.transformer.h):
            mirror = cfg.n_layer - 1 - i
            if self.skip_weights is not None and mirror < len(skips):
                x = x + self.skip_weights[mirror] * skips[mirror]
            if self.x0_lambdas is not None:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            table = cfg.value_table(i)
            value_embed = None if table is None else tables[table]
            if self.activation_checkpointing and self.training:  # keep block inputs only, recompute the rest
                x = torch.utils.checkpoint.checkpoint(block, x, rope, input_pos, mask, value_embed,
                                                      use_reentrant=False)
            else:
                x = block(x, rope, input_pos, mask, value_embed)
            if self.skip_weights is not None and i < len(self.skip_weights):
                skips.append(x)
        return x

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameters, each shared tensor counted once. non_embedding drops the position and value embeddings, and
        the token embedding unless it is tied to lm_head (then it does the output matmul's work)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if "ve" in self.transformer:  # looked up, not multiplied
                n -= sum(p.numel() for p in self.transformer.ve.parameters())
            if self.lm_head.weight is not self.transformer.wte.weight:
                n -= self.transformer.wte.weight.numel()
        return n

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context (e.g. to finetune GPT-2 at 256 tokens): keep the first block_size positions."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in [1, {self.config.block_size}], got {block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def crop_vocab(self, vocab_size: int) -> None:
        """Drop padded vocabulary rows (train.py pads to a multiple of 64) so sampling can never pick them."""
        if not 1 <= vocab_size <= self.config.vocab_size:
            raise ValueError(f"vocab_size must be in [1, {self.config.vocab_size}], got {vocab_size}")
        wte = self.transformer.wte
        tied = self.lm_head.weight is wte.weight
        self.config.vocab_size = vocab_size
        self.lm_head.weight = nn.Parameter(self.lm_head.weight[:vocab_size])
        wte.weight = self.lm_head.weight if tied else nn.Parameter(wte.weight[:vocab_size])
        for table in self.transformer.ve if "ve" in self.transformer else []:
            table.weight = nn.Parameter(table.weight[:vocab_size])

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the matmuls forward and backward, plus attention's 12*(nh*hd)*T per
        layer, where a banded layer's T is its band."""
        cfg = self.config
        attended = sum(cfg.band(i) or cfg.block_size for i in range(cfg.n_layer))
        return 6 * self.get_num_params() + 12 * cfg.n_head * cfg.head_dim * attended

    def estimate_mfu(self, tokens_per_iter: int, dt: float, peak_flops: float | None) -> float | None:
        """Model FLOPs utilisation: the share of the device's peak FLOP/s (runtime.peak_flops) that training at
        tokens_per_iter tokens in dt seconds uses; None where the peak is unknown."""
        if peak_flops is None or dt <= 0:
            return None
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops
