"""The optimizers a run can take: nanoGPT's AdamW (adamw: weight decay on matrices and embeddings only), or Muon
for the blocks' weight matrices with AdamW for everything else, in one optimizer; and how the run drives either:
the schedule's learning rate (set_lr, through the lr_scale that build gives each group) and whether a CUDA graph
can hold the step (set_capturable).

Muon (Jordan et al. 2024, "Muon: MomentUm Orthogonalized by Newton-Schulz"; Bernstein & Newhouse 2024): each
2-D weight matrix of a block takes SGD-momentum's update orthogonalised, its singular values pushed towards 1 by a
few Newton-Schulz iterations, so that no direction of the update dominates. The token and position embeddings,
the output head and the 1-D parameters (norm gains, biases) are not hidden-layer matrices: AdamW updates them.
Both live in one torch.optim.Optimizer, so a checkpoint holds one optimizer state, keyed as AdamW's is.

Sharded weights (FSDP, tensor parallelism) are DTensors: each process gathers the whole momentum matrix,
orthogonalises it (the same result on every process) and keeps its own shard of the update. That is simple and
exact; it costs one all-gather per matrix per step, like FSDP's own gathering of the weights.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

import parallel
from configurator import UserError
from model import GPT, GPTConfig

# the quintic Newton-Schulz coefficients of Jordan et al. 2024: they push singular values in (0, 1] into
# roughly [0.7, 1.2] in five steps, which trains as well as exact orthogonalisation at a fraction of its cost
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """The matrix g (m, n), or each of a stack of them (..., m, n), with its singular values pushed towards 1 and
    its singular vectors kept: approximately U V^T for g = U S V^T. Computed in bfloat16 on the smaller Gram
    matrix."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:  # X X^T is then the smaller product
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # the spectral norm is at most the Frobenius norm: <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the param groups marked `muon`, AdamW for the others (see the module's docstring). Group settings:
    lr, weight_decay (decoupled, as AdamW's), and momentum (Muon) or betas and eps (AdamW). A learning rate may
    be a tensor on the device (set_capturable): the step then reads no number from the device, and a CUDA
    graph can hold it. found_inf, when set (a 0-dim float tensor: 1 for a step to skip), makes the step leave
    the weights and every state as they were, on the device, without asking the host."""

    skips_on_device = True  # step.apply_update tells it through found_inf, as the fused AdamW

    def __init__(self, groups: list[dict[str, Any]], lr: float, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "momentum": momentum, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "muon": False, "capturable": False}
        super().__init__(groups, defaults)
        self.found_inf: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        keep = None if self.found_inf is None else self.found_inf == 0  # 0-dim bool: apply this step
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self.state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    for name in ("momentum_buffer",) if group["muon"] else ("exp_avg", "exp_avg_sq"):
                        self.state[p][name] = torch.zeros_like(p)
            if not group["muon"] and fusable(params):
                fused_adamw(params, [self.state[p] for p in params], group, self.found_inf)
                continue
            if group["muon"]:
                updates = muon_updates(params, [self.state[p]["momentum_buffer"] for p in params],
                                       group["momentum"], keep)
            else:
                updates = [adam_update(p.grad, self.state[p], group["betas"], group["eps"], keep) for p in params]
            apply_updates(params, updates, [self.state[p]["step"] for p in params], group, keep)


def muon_updates(params: list[torch.Tensor], bufs: list[torch.Tensor], beta: float,
                 keep: torch.Tensor | None) -> list[torch.Tensor]:
    """Each matrix's update: Nesterov momentum (the buffers updated in place), orthogonalised and scaled by
    sqrt(max(1, rows / cols)), so that a tall matrix's update has the per-element size of a square one's.
    Matrices of one shape are orthogonalised as one stack: a few large products instead of many small ones. A
    sharded matrix is gathered first, and each process keeps its own shard of the whole update."""
    grads = [p.grad for p in params]
    if keep is None and fusable(params):  # a few launches for all the matrices, not a few per matrix
        torch._foreach_mul_(bufs, beta)
        torch._foreach_add_(bufs, grads)
        directions = torch._foreach_add(grads, bufs, alpha=beta)  # Nesterov: gradient + next momentum
    else:
        directions = []
        for g, buf in zip(grads, bufs):
            momentum = buf * beta + g
            assign(buf, momentum, keep)
            directions.append(parallel.full_tensor(g + beta * momentum))
    updates: list[torch.Tensor] = [torch.empty(0)] * len(params)
    for shape in dict.fromkeys(d.shape for d in directions):
        same = [i for i, d in enumerate(directions) if d.shape == shape]
        stack = newton_schulz(torch.stack([directions[i] for i in same])) * max(1.0, shape[0] / shape[1]) ** 0.5
        for i, update in zip(same, stack.unbind(0)):
            updates[i] = parallel.same_shards_as(update, params[i])
    return updates


def apply_updates(params: list[torch.Tensor], updates: list[torch.Tensor], steps: list[torch.Tensor],
                  group: dict[str, Any], keep: torch.Tensor | None) -> None:
    """p -= lr * (update + weight_decay * p) and step += 1 for each parameter; where keep is False, nothing."""
    decay, lr = group["weight_decay"], group["lr"]
    if keep is None and fusable(params):
        if decay:
            torch._foreach_add_(updates, params, alpha=decay)
        torch._foreach_sub_(params, torch._foreach_mul(updates, lr))
        torch._foreach_add_(steps, 1)
        return
    for p, update, step in zip(params, updates, steps):
        decayed = update + decay * p if decay else update
        assign(p, p - lr * decayed, keep)
        assign(step, step + 1, keep)


def fusable(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel can step these at once: plain tensors (not DTensor shards) of one device
    and one dtype."""
    return bool(params) and all(type(p) is torch.nn.Parameter or type(p) is torch.Tensor for p in params) and len(
        {(p.device, p.dtype) for p in params}) == 1


def fused_adamw(params: list[torch.Tensor], states: list[dict[str, Any]], group: dict[str, Any],
                found_inf: torch.Tensor | None) -> None:
    """The AdamW part as one kernel for all its tensors (torch's fused AdamW, the one torch.optim.AdamW(fused=True)
    runs): the same step as adam_update and the decoupled decay, without a kernel launch per tensor and operation.
    found_inf skips the step inside the kernel; the step counts are put back after."""
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states], [], steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                        weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False, maximize=False,
                        grad_scale=None, found_inf=found_inf)
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))


def adam_update(grad: torch.Tensor, state: dict[str, Any], betas: tuple[float, float], eps: float,
                keep: torch.Tensor | None) -> torch.Tensor:
    """Adam's step direction (the moments in state updated in place), bias-corrected for the step about to be
    taken."""
    beta1, beta2 = betas
    step = state["step"] + 1
    exp_avg = state["exp_avg"] * beta1 + (1 - beta1) * grad
    exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad
    assign(state["exp_avg"], exp_avg, keep)
    assign(state["exp_avg_sq"], exp_avg_sq, keep)
    return exp_avg / (1 - beta1**step) / ((exp_avg_sq / (1 - beta2**step)).sqrt() + eps)


def assign(target: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None) -> None:
    """target = value, in place; where keep is False (a skipped step), target stays as it was."""
    target.copy_(value if keep is None else torch.where(keep, value, target))


def muon_groups(model: GPT, weight_decay: float, muon_lr: float, adam_lr: float, embed_lr: float | None = None,
                head_lr: float | None = None, muon_weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """The blocks' 2-D weight matrices for Muon (decayed by muon_weight_decay); AdamW for the embeddings and the
    head (decayed, as nanoGPT decays them) and for every 1-D parameter (not decayed). Each parameter in exactly one
    group. With embed_lr or head_lr, the embeddings (token, position, value; a tied head with them) and an untied
    head are groups of their own at those rates (None: adam_lr); without, one group, as checkpoints before these
    settings hold it."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # a tied weight once
    hidden = [p for n, p in named if p.dim() == 2 and n.startswith("transformer.h.")]
    chosen = {id(p) for p in hidden}
    matrices = [(n, p) for n, p in named if p.dim() >= 2 and id(p) not in chosen]
    groups = [{"params": hidden, "muon": True, "lr": muon_lr, "weight_decay": muon_weight_decay}]
    if embed_lr is None and head_lr is None:
        groups.append({"params": [p for _, p in matrices], "lr": adam_lr, "weight_decay": weight_decay})
    else:
        head = [p for n, p in matrices if n == "lm_head.weight"]  # named once: a tied head is named as wte
        groups.append({"params": [p for n, p in matrices if n != "lm_head.weight"],
                       "lr": adam_lr if embed_lr is None else embed_lr, "weight_decay": weight_decay})
        if head:
            groups.append({"params": head, "lr": adam_lr if head_lr is None else head_lr,
                           "weight_decay": weight_decay})
    return [*groups, {"params": [p for _, p in named if p.dim() < 2], "lr": adam_lr, "weight_decay": 0.0}]


def check_muon_settings(optimizer: str, embed_lr: float | None, head_lr: float | None,
                        muon_weight_decay: float) -> None:
    """Refuse Muon's own settings out of range, or given to another optimizer."""
    if muon_weight_decay < 0:
        raise UserError(f"muon_weight_decay must be at least 0, got {muon_weight_decay}")
    if optimizer != "muon" and (embed_lr, head_lr, muon_weight_decay) != (None, None, 0.0):
        raise UserError("embed_lr, head_lr and muon_weight_decay are settings of optimizer=muon: the AdamW recipe "
                        "keeps nanoGPT's one rate")


def check_head_lr(head_lr: float | None, config: GPTConfig) -> None:
    """Refuse a head rate where there is no head of its own (muon_groups would have nothing to give it)."""
    if head_lr is not None and config.tie_embeddings:
        raise UserError("head_lr needs an untied head (tie_embeddings=False): a tied head is the token embedding, "
                        "which takes embed_lr")


def adamw(model: GPT, weight_decay: float, learning_rate: float, betas: tuple[float, float],
          device_type: str) -> torch.optim.AdamW:
    """nanoGPT's AdamW (its GPT.configure_optimizers): weight decay on matrices and embeddings (dim >= 2) only,
    never on biases or norm gains; the fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))


def build(model: GPT, name: str, learning_rate: float, weight_decay: float, betas: tuple[float, float],
          device_type: str, muon_lr: float = 0.02, muon_momentum: float = 0.95, embed_lr: float | None = None,
          head_lr: float | None = None, muon_weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer `name` (adamw | muon) for the model; the rates of the embeddings and the head, and the
    matrices' decay, are Muon's settings (muon_groups). Every group records lr_scale, its learning rate over
    learning_rate: the schedule (set_lr) sets each group's rate to the scheduled rate times it."""
    if name == "adamw":
        optimizer = adamw(model, weight_decay, learning_rate, betas, device_type)
    else:
        groups = muon_groups(model, weight_decay, muon_lr, learning_rate, embed_lr, head_lr, muon_weight_decay)
        optimizer = Muon(groups, learning_rate, muon_momentum, betas)
    for group in optimizer.param_groups:
        group["lr_scale"] = group["lr"] / learning_rate if learning_rate else 0.0
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate for this step: each group's rate is lr times its lr_scale (build: Muon's matrices have a
    rate of their own), or lr where a group has none."""
    for group in optimizer.param_groups:
        rate = lr * group.get("lr_scale", 1.0)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(rate)
        else:
            group["lr"] = rate


def set_capturable(optimizer: torch.optim.Optimizer, device: torch.device, on: bool) -> None:
    """Whether a CUDA graph can hold the optimizer step: then its state and the learning rate live on the device
    (the rate a tensor that set_lr fills, so the schedule reaches the replayed step); else the rate is a number."""
    for group in optimizer.param_groups:
        group["capturable"] = on
        group["lr"] = torch.tensor(float(group["lr"]), device=device) if on else float(group["lr"])
        if group.get("fused") or on:  # these kernels keep their step counts beside the weights
            for p in group["params"]:
                if "step" in optimizer.state.get(p, {}):
                    optimizer.state[p]["step"] = optimizer.state[p]["step"].to(p.device, torch.float32)
