"""Where a GPT's parameters, training memory and FLOPs go: the table that `python accounting.py PRESET` prints
(and train.py at start), and the batch arithmetic and activation estimate of `train.py --dry_run=True`. Models are
built on the meta device, so gpt3-175b costs no memory.

    python accounting.py gpt2                                          # 124,439,808
    python accounting.py gpt2 --qkv_bias=False --tie_embeddings=False  # 163,009,536 = 621.83 MB in float32
    python train.py config/train_shakespeare_char.py config/arch/llama.py --dry_run=True  # what a config trains
"""

from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
from dataclasses import replace

import torch

import configurator
import microbatch
import optim
import process
import runtime
from configurator import UserError
from microbatch import BatchPlan
from model import GPT, PRESETS, GPTConfig, resolve_config


OPTIMIZER_STATES = {"adamw": "AdamW", "muon": "Muon+AdamW"}  # train.py's optimizer setting -> column label


def non_embedding_params(model: GPT) -> int:
    """Every parameter but the token, position and value embeddings (each shared tensor once); an untied head is a
    matrix of its own and stays counted. Not GPT.get_num_params, the N of the FLOPs' 6N, which keeps a tied token
    embedding because it does the head's matmul."""
    t = model.transformer
    embeddings = sum(t[part].weight.numel() for part in ("wte", "wpe") if part in t)
    embeddings += sum(p.numel() for p in t.ve.parameters()) if "ve" in t else 0
    return model.get_num_params(non_embedding=False) - embeddings


def size(model: GPT) -> str:
    """'124.44M parameters (85.00M non-embedding)': a run's size in its opening line."""
    return (f"{model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters "
            f"({non_embedding_params(model) / 1e6:.2f}M non-embedding)")


def optimizer_state_elements(model: GPT, optimizer: str = "adamw") -> int:
    """Elements of optimizer state, each the size of a parameter's element: AdamW keeps two moments a parameter;
    Muon one momentum buffer for each matrix that optim.muon_groups gives it, AdamW's two for the rest. The
    per-tensor step counters (one scalar each) are left out, as a rounding error."""
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}, got '{optimizer}'")
    if optimizer == "adamw":
        return 2 * model.get_num_params(non_embedding=False)
    # the groups a muon run builds (only their membership is read: the rates do not matter, no state is allocated)
    groups = optim.muon_groups(model, weight_decay=0.0, muon_lr=0.0, adam_lr=0.0)
    return sum((1 if group.get("muon") else 2) * p.numel() for group in groups for p in group["params"])


def table(model: GPT, dtype: torch.dtype | None = None, optimizer: str = "adamw") -> str:
    """Parameters per component, total, non-embedding and the FLOPs' N, weight bytes, training memory with the
    state of `optimizer` (adamw | muon, train.py's setting), FLOPs per token. With the dtype of a run of train.py,
    only what it does: float32 weights, gradients and optimizer states whatever it computes in (autocast);
    without, pure bfloat16 training's memory too."""
    t = model.transformer
    counts = {}
    for label, part in (("token embedding", "wte"), ("position embedding", "wpe")):
        counts[label] = t[part].weight.numel() if part in t else 0
    if "ve" in t:
        counts["value embeddings"] = sum(p.numel() for p in t.ve.parameters())
    counts["attention"] = sum(p.numel() for b in t.h for p in b.attn.parameters())
    counts["MLP"] = sum(p.numel() for b in t.h for p in b.mlp.parameters())
    counts["norms"] = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-2:][0].startswith("ln_"))
    if model.skip_weights is not None:
        counts["U-net skip weights"] = model.skip_weights.numel()
    if model.x0_lambdas is not None:
        counts["x0 mixing weights"] = model.resid_lambdas.numel() + model.x0_lambdas.numel()
    tied = model.lm_head.weight is t.wte.weight
    counts["head (tied to the token embedding)" if tied else "head"] = 0 if tied else model.lm_head.weight.numel()
    total = model.get_num_params(non_embedding=False)
    assert total == sum(counts.values()), "a parameter is in no component"
    states = optimizer_state_elements(model, optimizer)
    columns = ("weights", "grads", OPTIMIZER_STATES[optimizer], "total")
    non_embedding = "non-embedding" if tied else "non-embedding (the untied head kept)"
    summary = {"total": total, non_embedding: non_embedding_params(model),
               "N in the FLOPs' 6N (the head's matmul included)": model.get_num_params()}
    rows = [f"{k:<48} {v:>17,}" for k, v in counts.items()]
    rows += ["-" * 66, *(f"{k:<48} {v:>17,}" for k, v in summary.items()),
             f"weights: {total * 4 / 2**20:,.2f} MB in float32"
             + ("" if dtype else f", {total * 2 / 2**20:,.2f} MB in bf16") + " (MB = 2^20 B)",
             "", f"{'training memory (GiB)':<24}" + "".join(f"{h:>12}" for h in columns)]
    kinds = [("fp32 (or bf16 AMP)", 4), ("bf16 (pure, bf16 states)", 2)]  # bytes of a weight, a grad, a state
    if dtype is not None:
        kinds = [(f"fp32, {str(dtype).removeprefix('torch.')} compute", 4)]
    for label, size in kinds:
        gib = [n * size / 2**30 for n in (total, total, states)]
        rows.append(f"{label:<24}" + "".join(f"{x:>12,.2f}" for x in (*gib, sum(gib))))
    rows.append(f"\ntraining FLOPs per token at block_size {model.config.block_size}: {model.flops_per_token():,.0f}")
    return "\n".join(rows)


def activation_bytes(config: GPTConfig, batch_size: int, dtype: torch.dtype, checkpointing: bool) -> tuple[int, int]:
    """A rough activation-memory estimate of one micro-batch, (all, of which logits): ~34 bytes per token and unit
    of width per layer in 16-bit with fused attention (Korthikanti et al. 2022, whose 5*a*s/h score term flash
    attention removes), twice that in float32; with activation checkpointing a layer keeps only its input and one
    layer is recomputed at a time. Plus the float32 logits and their gradient."""
    B, T, C, L = batch_size, config.block_size, config.n_embd, config.n_layer
    scale = 2 if dtype == torch.float32 else 1
    layer = 34 * B * T * C * scale
    layers = L * 2 * B * T * C * scale + layer if checkpointing else L * layer
    logits = 2 * 4 * B * T * config.vocab_size
    return layers + logits, logits


def check_training_fits(config: GPTConfig, optimizer: str, micro: int | None, batch_size: int, dtype: torch.dtype,
                        checkpointing: bool, device: torch.device) -> None:
    """Refuse, before the model is built, a run that cannot fit the device: float32 weights, gradients and the
    optimizer's states (optimizer_state_elements) and the activations of one micro-batch of `micro` sequences
    (None: micro_batch=auto, whose probe needs one sequence to fit)."""
    with torch.device("meta"):  # shapes only: counts the parameters of any size at once
        model = GPT(config)
    n_params = model.get_num_params(non_embedding=False)
    states = optimizer_state_elements(model, optimizer)
    if micro is None:
        what, advice = "one sequence", "lower block_size, or set activation_checkpointing=True"
    else:
        what = f"batch_size {batch_size}" if micro == batch_size else f"micro_batch {micro}"
        advice = ("set micro_batch to fewer sequences (auto: the largest that fits; either way the tokens per step "
                  "stay) or lower block_size")
    activations = activation_bytes(config, micro or 1, dtype, checkpointing)[0]
    runtime.check_fits(4 * (2 * n_params + states) + activations, device, f"training at {what} and block_size "
                       f"{config.block_size}", advice)


def dry_run(config: GPTConfig, batch_size: int, accumulation: int, dp_world: int, micro_batch: int | str,
            dtype: torch.dtype, checkpointing: bool) -> str:
    """train.py --dry_run=True: the batch plan's arithmetic over dp_world data-parallel shares and activation_bytes'
    estimate for its micro-batches (micro_batch=auto: found when the run starts; the estimate is then
    batch_size's)."""
    size = microbatch.parse(micro_batch, batch_size, None)  # checked against the share where train.py starts
    probed = size is None
    plan = BatchPlan(batch_size, accumulation, config.block_size, dp_world, 0, size or batch_size)
    B, T, accum, micro = plan.batch_size, config.block_size, plan.accumulation, plan.micro
    split = ("micro_batch=auto: the micro-batch is probed when the run starts\n" if probed else
             f"micro-batches of {micro} sequences: {plan.micro_steps} micro-steps per data-parallel share\n"
             if micro != B else "")
    total, logits = activation_bytes(config, micro, dtype, checkpointing)
    return (f"\ntokens per iteration: {plan.tokens_per_iter:,} = batch_size {B} x block_size {T} x "
            f"gradient_accumulation_steps {accum} ({accum // dp_world} per data-parallel share x {dp_world} "
            f"share(s))\n{split}"
            f"activations of one micro-batch of {micro} ({str(dtype).removeprefix('torch.')}, "
            f"activation_checkpointing={checkpointing}): ~{total / 2**30:,.2f} GiB (estimate), of which logits "
            f"{logits / 2**30:,.2f} GiB\ndry run: nothing trained")


def main(argv: list[str]) -> str:
    """python accounting.py PRESET [--key=value ...]: a preset with GPTConfig fields overridden. Prints the table.
    (A train.py config file is accounted by train.py itself: python train.py CONFIG --dry_run=True.)"""
    if not argv or argv[0].startswith("-"):
        raise UserError(f"name a preset first: {', '.join(PRESETS)}")
    if argv[0].endswith(".py"):
        raise UserError(f"{argv[0]} is a config file: account it with python train.py {argv[0]} --dry_run=True")
    settings = configurator.settings_from_args(GPTConfig, argv[1:])  # coerced to GPTConfig's field types
    try:  # over the preset, each flag as given: --n_kv_head=None means None here, not "the preset's"
        config = replace(resolve_config(argv[0]), **settings)
    except ValueError as e:
        raise UserError(str(e)) from None
    with torch.device("meta"):  # shapes only: no memory
        model = GPT(config)
    out = f"{' '.join(argv)} (preset): {config}\n\n{table(model)}"
    print(out)
    return out


if __name__ == "__main__":
    process.run(main)
