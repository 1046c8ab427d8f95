"""A GPT language model: GPT-2 by default, with parameter names that map one to one onto HF's GPT-2, and the
switches of its family: GPT-1's post-norm, RMSNorm, SwiGLU, rotary positions, grouped-query attention, a head
size of its own, GPT-3's alternating dense and locally banded attention, PaLM's parallel block, untied embeddings.

References: Radford et al. 2018/2019 (GPT-1, GPT-2: pre-LayerNorm, residual projections scaled by 1/sqrt(2*n_layer)),
Vaswani et al. 2017 (attention), Zhang & Sennrich 2019 (RMSNorm), Shazeer 2020 (SwiGLU), Su et al. 2021 (RoPE),
Shazeer 2019 / Ainslie et al. 2023 (multi-/grouped-query attention), Brown et al. 2020 and Child et al. 2019
(GPT-3's banded layers, from the Sparse Transformer), Chowdhery et al. 2022 (PaLM: parallel
blocks, no biases), Kaplan et al. 2020 / PaLM appendix B (FLOPs per token for MFU).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass
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
    window_size: int | None = None  # banded layers: a token attends to itself and the window_size - 1 before it
    norm: str = "layernorm"  # layernorm | rmsnorm
    post_norm: bool = False  # normalise after each residual add (GPT-1, the original Transformer); no final norm
    mlp: str = "gelu"  # gelu | relu | swiglu
    mlp_hidden: int | None = None  # None: 4 * n_embd; for swiglu 2/3 of that, rounded up to a multiple of 256
    pos_emb: str = "learned"  # learned | rope | none
    rope_base: float = 10000.0
    parallel_block: bool = False  # PaLM: x + attn(norm(x)) + mlp(norm(x)), one norm per block
    tie_embeddings: bool = True  # lm_head shares the token embedding (GPT-2); False: a matrix of its own

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.head_size is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}), or set head_size")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.pos_emb == "rope" and self.hs % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.hs}")
        for name, choices in (("norm", ("layernorm", "rmsnorm")), ("mlp", ("gelu", "relu", "swiglu")),
                              ("pos_emb", ("learned", "rope", "none")), ("attn_pattern", ("dense", "alternating"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got '{getattr(self, name)}'")
        if (self.attn_pattern == "alternating") != (self.window_size is not None):
            raise ValueError("window_size and attn_pattern='alternating' go together: set both or neither")
        if self.window_size is not None and not 1 <= self.window_size <= self.block_size:
            raise ValueError(f"window_size must be in [1, block_size={self.block_size}], got {self.window_size}")
        if self.post_norm and self.parallel_block:
            raise ValueError("post_norm with parallel_block is not supported: parallel blocks are pre-norm")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def hs(self) -> int:  # head size
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def window(self, layer: int) -> int | None:  # the band of a layer's attention; None: dense
        return self.window_size if self.attn_pattern == "alternating" and layer % 2 else None

    @property
    def hidden(self) -> int:  # MLP width
        if self.mlp_hidden:
            return self.mlp_hidden
        return -(-(8 * self.n_embd // 3) // 256) * 256 if self.mlp == "swiglu" else 4 * self.n_embd


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd)
    return LayerNorm(config.n_embd, bias=config.bias)


class RMSNorm(nn.Module):
    """x / rms(x) * weight: LayerNorm without centring or bias (Zhang & Sennrich 2019; LLaMA)."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, 1e-5)


def rope_tables(pos: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, head_size / 2) of the rotation angles pos * base^(-2i / head_size) (Su et al. 2021), in
    float32 whatever the model's dtype: rounded angles drift further the later the position."""
    freqs = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32, device=pos.device) / head_size)
    angles = torch.outer(pos.float(), freqs)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) pairwise: dimension i with i + hs/2 (the "rotate half" layout of GPT-NeoX/LLaMA),
    by the angles of its position; cos, sin (T, hs/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (torch's has no such option before 2.1's `bias=`)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache(nn.Module):
    """Keys and values of one attention layer for every position of the window, preallocated so that shapes stay
    static (torch.compile, CUDA graphs) and filled in place as tokens are processed."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        for name in ("k", "v"):  # two buffers, written by index_put_: the compiler turns each write into a
            # scatter of the new positions (one buffer written through views cost a copy of all of it per step)
            self.register_buffer(name, torch.zeros(batch_size, n_head, max_len, head_size, dtype=dtype,
                                                   device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nkv, T, hs) at positions input_pos (T,); return all keys and all values, each
        (B, nkv, max_len, hs)."""
        self.k[:, :, input_pos] = k
        self.v[:, :, input_pos] = v
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, window: int | None = None) -> None:
        super().__init__()
        self.kv_cache: KVCache | None = None  # set by GPT.setup_cache for generation
        self.window = window  # None: dense; else a token sees itself and the window - 1 before it (GPT-3's band)
        self.n_head, self.n_kv_head, self.hs = config.n_head, config.kv_heads, config.hs
        self.dropout = config.dropout
        qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
        # q, k, v in one matmul: n_head query heads, n_kv_head key and value heads
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.hs, bias=qkv_bias)
        self.c_proj = nn.Linear(self.n_head * self.hs, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.hs
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)
        if rope is not None:  # rotary positions turn q.k into a function of the distance between tokens
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if input_pos is not None:  # generation: attend over the cached window, mask (T, max_len) hides the future
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, nkv, max_len, hs)
            k, v = k[:, :, : mask.size(-1)], v[:, :, : mask.size(-1)]  # the first span positions, as wide as mask
            if self.window:  # and of those, the band
                mask = mask & (input_pos[:, None] - torch.arange(mask.size(-1), device=mask.device) < self.window)
            # written out rather than SDPA: at T=1 the compiler fuses this into a few kernels, while the fused
            # attention kernels cost ~8 us a layer (H100, GPT-2 124M decode). The nh // nkv query heads of a
            # group share one key/value head through broadcasting: (B, nkv, group, T, hs).
            qg = q.view(B, nkv, nh // nkv, T, hs)
            att = (qg @ k.unsqueeze(2).transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nkv, group, T, span)
            y = (att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v.unsqueeze(2)).view(B, nh, T, hs)
        elif self.window:
            y = banded_attention(q, k, v, self.window, self.dropout if self.training else 0.0)
        else:  # flash / memory-efficient kernels where the device has them; the math fallback on CPU
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True, enable_gqa=nkv != nh)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)
        return self.resid_dropout(self.c_proj(y))


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dropout_p: float = 0.0,
                     flex: bool | None = None) -> torch.Tensor:
    """Causal attention in which query i sees keys i - window + 1 .. i; q (B, nh, T, hs), k, v (B, nkv, T, hs).
    With flex, FlexAttention skips the key blocks outside the band, so the cost grows with T * window rather than
    T^2. By default flex trains on CUDA; inference (evaluation, prefill at every prompt length, each length a
    recompile of the kernel) and dropout (flex has none) take SDPA with the explicit (T, T) mask instead."""
    T, gqa = q.size(-2), k.size(1) != q.size(1)
    if (q.is_cuda and torch.is_grad_enabled() if flex is None else flex) and not dropout_p:
        attend = flex_attention if torch.compiler.is_compiling() else compiled_flex_attention()
        return attend(q, k, v, block_mask=band_block_mask(T, window, q.device), enable_gqa=gqa)
    i = torch.arange(T, device=q.device)
    band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)  # (T, T): key j visible to query i
    return F.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=dropout_p, enable_gqa=gqa)


@functools.cache
def compiled_flex_attention() -> Any:  # flex_attention is a fused kernel only when compiled
    return torch.compile(flex_attention)


@functools.lru_cache(maxsize=16)  # under torch.compile the cache is bypassed and the mask built in the graph
def band_block_mask(T: int, window: int, device: torch.device) -> Any:
    return create_block_mask(lambda b, h, i, j: (j <= i) & (i - j < window), None, None, T, T, device=device)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"  # silu(x W) * (x V): c_fc holds W and V side by side
        self.c_fc = nn.Linear(config.n_embd, (2 if self.swiglu else 1) * config.hidden, bias=config.bias)
        # GPT-2's gelu is the tanh approximation
        self.act = nn.ReLU() if config.mlp == "relu" else nn.SiLU() if self.swiglu else nn.GELU(approximate="tanh")
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
    def __init__(self, config: GPTConfig, window: int | None = None) -> None:
        super().__init__()
        self.post_norm, self.parallel = config.post_norm, config.parallel_block
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, window)
        self.ln_2 = None if config.parallel_block else make_norm(config)  # a parallel block shares ln_1
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.parallel:  # PaLM
            h = self.ln_1(x)
            return x + self.attn(h, input_pos, mask, rope) + self.mlp(h)
        if self.post_norm:  # GPT-1
            x = self.ln_1(x + self.attn(x, input_pos, mask, rope))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), input_pos, mask, rope)  # GPT-2: pre-norm
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        modules = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules["drop"] = nn.Dropout(config.dropout)
        modules["h"] = nn.ModuleList([Block(config, config.window(i)) for i in range(config.n_layer)])
        if not config.post_norm:  # post-norm blocks end normalised already
            modules["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017), as GPT-2 does
        self.activation_checkpointing = False  # training: keep each block's input, recompute its activations
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @classmethod
    def from_hf(cls, hf_model: nn.Module, dropout: float = 0.0) -> GPT:
        """Convert a transformers GPT2LMHeadModel. Its Conv1D layers store weights as (in, out), so the four
        linear maps per block are transposed; every other tensor maps by name unchanged."""
        c = hf_model.config
        model = cls(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                              n_head=c.n_head, n_embd=c.n_embd, dropout=dropout, bias=True))
        hf_sd = hf_model.state_dict()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                source = hf_sd[name]
                tensor.copy_(source.t() if name.endswith(HF_TRANSPOSED) else source)
        return model

    @classmethod
    def from_pretrained(cls, name: str, dropout: float = 0.0) -> GPT:
        """OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl) through transformers' download cache."""
        from transformers import GPT2LMHeadModel

        return cls.from_hf(GPT2LMHeadModel.from_pretrained(name), dropout)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameters, each shared tensor counted once. non_embedding drops the position embedding, and the
        token embedding unless it is tied to lm_head (then it does the output matmul's work)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if self.lm_head.weight is not self.transformer.wte.weight:
                n -= self.transformer.wte.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, input_pos: torch.Tensor | None = None,
        span: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if targets (B, T) are given
        (targets of -1 are ignored). With input_pos (T,), the positions of idx in the window, attention extends
        the KV cache that setup_cache made and reads its first `span` positions (None: all; past every input_pos)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        cfg, mask, rope = self.config, None, None
        if input_pos is None:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        else:
            pos, mask = input_pos, self.causal_mask[input_pos, :span]  # mask (T, span): key j visible to query i
        x = self.transformer.wte(idx)  # (B, T, C)
        if cfg.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        elif cfg.pos_emb == "rope":
            rope = rope_tables(pos, cfg.hs, cfg.rope_base)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training:  # keep block inputs only, recompute the rest
                x = torch.utils.checkpoint.checkpoint(block, x, input_pos, mask, rope, use_reentrant=False)
            else:
                x = block(x, input_pos, mask, rope)
        if "ln_f" in self.transformer:
            x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return logits, loss

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

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices and embeddings (dim >= 2) only, never on biases or norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the matmuls forward and backward, plus attention's 12*(nh*hs)*T per
        layer, where a banded layer's T is its window."""
        cfg = self.config
        attended = sum(cfg.window(i) or cfg.block_size for i in range(cfg.n_layer))
        return 6 * self.get_num_params() + 12 * cfg.n_head * cfg.hs * attended

    def estimate_mfu(self, tokens_per_iter: int, dt: float, device: torch.device | str) -> float | None:
        """Model FLOPs utilisation against the device's dense bf16 peak; None where the peak is unknown."""
        peak = device_peak_flops(device)
        if peak is None or dt <= 0:
            return None
        return self.flops_per_token() * tokens_per_iter / dt / peak

    def setup_cache(self, batch_size: int) -> None:
        """Give every attention layer a KV cache for batch_size rows and the whole window. A cache that fits is
        kept: the same buffers let a compiled decode step (and its CUDA graph) serve every generation."""
        cfg, p = self.config, self.lm_head.weight
        cache = self.transformer.h[0].attn.kv_cache
        if cache is not None and (cache.k.size(0), cache.k.dtype, cache.k.device) == (batch_size, p.dtype, p.device):
            return
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, cfg.kv_heads, cfg.block_size, cfg.hs, p.dtype, p.device)
        mask = torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool, device=p.device).tril()
        self.register_buffer("causal_mask", mask, persistent=False)

    def clear_cache(self) -> None:
        """Free the KV cache (generation keeps it for the next call)."""
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def decode_one(self, token: torch.Tensor, input_pos: torch.Tensor, seen: torch.Tensor, temperature: float,
                   top_k: int | None, top_p: float, repetition_penalty: float, span: int) -> torch.Tensor:
        """One token per row (B, 1) at window position input_pos (1,), attending over the first span cached
        positions -> the next token (B,), drawn as sample_logits draws it. Static shapes: compile_decode() makes
        forward and sampling one compiled graph per span (a CUDA graph on a GPU), one launch per step."""
        logits = self(token, input_pos=input_pos, span=span)[0][:, -1]
        return sample_logits(logits.float(), temperature, top_k, top_p, repetition_penalty, seen)

    def compile_decode(self) -> None:
        """Compile decode_one: static shapes (a graph per batch size and span). On a GPU: a CUDA graph, autotuned
        matmuls and coordinate-descent-tuned kernels. At batch 1 a step is bound by the latency of its hundred-odd
        small kernels, and the tuning shortens them (bench.py --mode=sample measures it)."""
        cuda = self.lm_head.weight.is_cuda
        options = {"triton.cudagraphs": True, "max_autotune": True, "coordinate_descent_tuning": True} if cuda else None
        self.decode_one = torch.compile(self.decode_one, fullgraph=True, dynamic=False, options=options)

    @torch.no_grad()
    def generate_tokens(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        top_p: float = 1.0, repetition_penalty: float = 1.0, stop_ids: tuple[int, ...] = (), use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every row of idx (B, T), (B,) at a time, up to max_new_tokens. A row that
        produced one of stop_ids repeats it from then on; generation ends once every row has.

        The model sees a window of the sequence, at most block_size tokens. Learned positions tie every cached
        key to its place in the window, so the window cannot slide one token at a time without recomputing all
        of it; instead, when it is full it jumps: it restarts from the last 3/4 block_size tokens, which are
        prefilled in one pass. use_cache=False runs the same windows through the full model every step (the
        reference path: same tokens, many times slower)."""
        B, T = idx.shape
        block, device = self.config.block_size, idx.device
        tokens, start, fresh = idx, max(0, T - block), True  # window = tokens[:, start:]; fresh: prefill it
        seen = torch.zeros(B, self.config.vocab_size, dtype=torch.bool, device=device).scatter_(1, idx, True)
        stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        positions = torch.arange(block, device=device)  # input_pos as slices of this: no host-to-device copies
        next_id = idx[:, -1]  # the last token so far, (B,)
        if use_cache:
            self.setup_cache(B)
        for _ in range(max_new_tokens):
            length = tokens.size(1)
            if length - start > block:
                start, fresh = length - max(1, block * 3 // 4), True
            if use_cache and not fresh:
                # attention reads a power-of-two span of the cache, at least 128, covering the window: short
                # windows skip most of the cache, for one compiled graph per span
                span = min(block, max(128, 1 << (length - start - 1).bit_length()))
                # in: next_id (B, 1), not tokens[:, -1:], a slice whose stride changes every step (a recompile);
                # out: a clone, since a CUDA graph reuses its output buffer on the next replay
                next_id = self.decode_one(next_id[:, None], positions[length - 1 - start : length - start], seen,
                                          temperature, top_k, top_p, repetition_penalty, span).clone()
            else:  # the reference path, or a prefill of the (new) window
                window = tokens[:, start:]
                logits = self(window, input_pos=positions[: window.size(1)] if use_cache else None)[0][:, -1]
                next_id = sample_logits(logits.float(), temperature, top_k, top_p, repetition_penalty, seen)
                fresh = False
            if stop_ids:
                next_id = torch.where(finished, tokens[:, -1], next_id)
                finished |= torch.isin(next_id, stops)
            if repetition_penalty != 1.0:
                seen.scatter_(1, next_id[:, None], True)
            tokens = torch.cat((tokens, next_id[:, None]), dim=1)
            yield next_id
            if stop_ids and bool(finished.all()):
                break

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """idx (B, T) extended by up to max_new_tokens sampled tokens -> (B, T + n); see generate_tokens."""
        new = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, **kwargs))
        return torch.cat([idx, *(t[:, None] for t in new)], dim=1)


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                  repetition_penalty: float = 1.0, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, vocab): a draw from softmax(adjust_logits(...)), or its argmax when
    temperature is 0. The draw is the Gumbel-max trick, argmax(logits + G) with G = -log(E), E ~ Exp(1): one
    pass that compiles into the decode graph, where softmax + torch.multinomial would take several."""
    logits = adjust_logits(logits, temperature, top_k, top_p, repetition_penalty, seen)
    if temperature == 0:
        return argmax_rows(logits)
    return argmax_rows(logits - torch.empty_like(logits).exponential_(1).log())


def argmax_rows(x: torch.Tensor, chunks: int = 64) -> torch.Tensor:
    """torch.argmax(x, dim=-1) for x (B, n), the first maximum included, in two stages: the maximum of each of
    `chunks` slices, then across them. Compiled at batch 1, a one-stage argmax over 50k logits runs in a single
    thread block (36 us per GPT-2 step on an H100); two stages spread it over many (2 us)."""
    B, n = x.shape
    x = F.pad(x, (0, -n % chunks), value=float("-inf")).view(B, chunks, -1)
    best, where = x.max(dim=-1)  # (B, chunks): the first maximum of each slice
    chunk = best.argmax(dim=-1, keepdim=True)  # the first slice holding the overall maximum
    return (chunk * x.size(-1) + where.gather(1, chunk))[:, 0]


def adjust_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                  repetition_penalty: float = 1.0, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The logits (B, vocab) of the distribution to sample from. repetition_penalty > 1 discourages the tokens
    marked in seen (B, vocab), as CTRL does (Keskar et al. 2019): positive logits are divided by it, negative
    ones multiplied. Then temperature (0 leaves the logits for an argmax); top_k keeps the k likeliest tokens;
    top_p the smallest set whose probability reaches top_p (nucleus sampling, Holtzman et al. 2019)."""
    if repetition_penalty != 1.0 and seen is not None:
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if temperature == 0:
        return logits
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the tokens before it already reach top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    return logits


# HF's GPT-2 uses Conv1D layers, which store these weights as (in, out); nn.Linear stores (out, in)
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Dense bf16 tensor-core peak (FLOP/s, no sparsity) by device-name fragment, from the vendors' data sheets.
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "A100": 312e12, "A800": 312e12,
              "L40S": 362.05e12, "A10G": 70e12, "L4": 121e12, "RTX 4090": 165.2e12, "RTX 3090": 71e12}


def device_peak_flops(device: torch.device | str) -> float | None:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in PEAK_FLOPS.items():
        if fragment in name:
            return peak
    return None


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


def preset_config(name: str, **overrides: Any) -> GPTConfig:
    """A preset's GPTConfig, any field overridden. Unknown names raise ValueError naming the nearest."""
    if name not in PRESETS:
        nearest = difflib.get_close_matches(name, PRESETS, n=1, cutoff=0.0)
        raise ValueError(f"unknown preset '{name}' (did you mean '{nearest[0]}'?)")
    return GPTConfig(**(PRESETS[name] | overrides))


if __name__ == "__main__":  # python model.py NAME_OR_CONFIG [--key=value ...]: see accounting.py
    import accounting
    import configurator

    configurator.run(accounting.main)
