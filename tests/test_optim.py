"""optim.py: Muon's update against a reference written here from the algorithm (Jordan et al. 2024), its AdamW part
against torch.optim.AdamW, the parameter groups (nanoGPT's AdamW's and Muon's), a skipped step that changes
nothing, exact resume, and the learning rate as the schedule and a CUDA graph set it; the schedules against hand
values and the target loss's stop live in test_train.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import optim
import train
from conftest import CharData, tiny_flags, tiny_gpt

CPU = torch.device("cpu")


def reference_orthogonalise(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic Newton-Schulz iteration as the paper writes it, in float64: X <- a X + b (X X^T) X +
    c (X X^T)^2 X from X = G / ||G||_F, on the wide orientation, coefficients (3.4445, -4.7750, 2.0315)."""
    x = g.double()
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    x = x / x.norm()
    for _ in range(steps):
        a = x @ x.T
        x = 3.4445 * x - 4.7750 * a @ x + 2.0315 * a @ a @ x
    return x if wide else x.T


@pytest.mark.parametrize("shape", [(8, 8), (6, 16), (24, 8)])
def test_newton_schulz_is_the_papers_iteration_and_nearly_orthogonal(shape: tuple[int, int]):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ours = optim.newton_schulz(g)
    torch.testing.assert_close(ours.double(), reference_orthogonalise(g), atol=0.03, rtol=0)  # bfloat16's error
    singular = torch.linalg.svdvals(ours.float())
    assert singular.min() > 0.5 and singular.max() < 1.3  # pushed towards 1, as the iteration is tuned to
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (ours.float() * (u @ vh)).sum() / (ours.float().norm() * (u @ vh).norm())
    assert cosine > 0.95  # the direction of U V^T, the exact orthogonalisation


def test_muon_steps_each_matrix_as_the_algorithm_says():
    """Three matrices, two of one shape (orthogonalised as one stack) and one of another, each against the
    reference on its own."""
    torch.manual_seed(0)
    shapes = [(6, 16), (6, 16), (8, 8)]
    ws = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    lr, beta = 0.05, 0.9
    opt = optim.Muon([{"params": ws, "muon": True}], lr=lr, momentum=beta)
    expected = [w.detach().double().clone() for w in ws]
    bufs = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
    for _ in range(3):
        grads = [torch.randn(shape) for shape in shapes]
        for w, g in zip(ws, grads):
            w.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            bufs[i] = beta * bufs[i] + g.double()  # SGD momentum, then Nesterov's look-ahead
            expected[i] = expected[i] - lr * reference_orthogonalise(g.double() + beta * bufs[i])  # not tall
    for w, want in zip(ws, expected):
        torch.testing.assert_close(w.detach().double(), want, atol=0.01, rtol=0)


def test_a_tall_matrix_update_is_scaled_by_the_root_of_its_aspect_ratio():
    g = torch.randn(24, 6, generator=torch.Generator().manual_seed(1))
    w = torch.nn.Parameter(torch.zeros(24, 6))
    w.grad = g
    optim.Muon([{"params": [w], "muon": True}], lr=1.0, momentum=0.0).step()
    torch.testing.assert_close(-w.detach().double(), reference_orthogonalise(g) * 2.0, atol=0.06, rtol=0)


def test_the_adamw_part_steps_as_torch_adamw():
    model_a, model_b = tiny_gpt(seed=3), tiny_gpt(seed=3)
    decay = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.1}
    ours = optim.Muon([{"params": list(model_a.parameters())}], **decay)
    theirs = torch.optim.AdamW(model_b.parameters(), eps=1e-8, foreach=False, **decay)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):  # the same gradients for both: the optimizers alone are compared
        for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_adamw_decays_matrices_and_embeddings_only():
    model = tiny_gpt()  # tied embeddings, biases
    opt = optim.adamw(model, weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    params = dict(model.named_parameters())  # the tied weight appears once
    assert {id(p) for p in params.values() if p.dim() >= 2} == decay
    assert {id(p) for p in params.values() if p.dim() < 2} == no_decay
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in params.values())  # each parameter in exactly one group
    assert listed.count(id(model.lm_head.weight)) == 1
    assert all(g["lr"] == 1e-3 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)


@pytest.mark.parametrize("tie", [True, False])
def test_each_parameter_is_in_exactly_one_group_muon_taking_the_blocks_matrices(tie: bool):
    model = tiny_gpt(tie_embeddings=tie)
    groups = optim.muon_groups(model, weight_decay=0.1, muon_lr=0.02, adam_lr=1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # none twice, none missing
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in groups[0]["params"]}
    assert groups[0]["muon"] and muon == {n for n, p in model.named_parameters()
                                          if p.dim() == 2 and n.startswith("transformer.h.")}
    decayed = {names[id(p)] for p in groups[1]["params"]}
    assert decayed == {"transformer.wte.weight", "transformer.wpe.weight"} | ({"lm_head.weight"} if not tie else set())
    assert all(p.dim() == 1 for p in groups[2]["params"]) and groups[2]["weight_decay"] == 0.0


@pytest.mark.parametrize("tie", [True, False])
def test_embed_lr_and_head_lr_give_the_embeddings_and_an_untied_head_groups_of_their_own(tie: bool):
    model = tiny_gpt(tie_embeddings=tie, value_embeds=1)
    groups = optim.muon_groups(model, weight_decay=0.1, muon_lr=0.02, adam_lr=1e-3, embed_lr=0.3, head_lr=4e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    by_group = [({names[id(p)] for p in g["params"]}, g["lr"], g["weight_decay"]) for g in groups[1:]]
    embeddings = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ve.0.weight"}
    assert by_group[0] == (embeddings, 0.3, 0.1)  # a tied head is the token embedding: embed_lr
    assert by_group[1:-1] == ([] if tie else [({"lm_head.weight"}, 4e-3, 0.1)])
    assert by_group[-1][1:] == (1e-3, 0.0) and all(p.dim() == 1 for p in groups[-1]["params"])


def test_muon_weight_decay_shrinks_the_matrices_by_lr_times_it_each_step():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 16))
    opt = optim.Muon([{"params": [w], "muon": True, "weight_decay": 0.05}], lr=0.1)
    before = w.detach().clone()
    g = torch.randn(6, 16)
    w.grad = g.clone()
    opt.step()
    expected = before.double() * (1 - 0.1 * 0.05) - 0.1 * reference_orthogonalise(g.double() * (1 + 0.95))
    torch.testing.assert_close(w.detach().double(), expected, atol=0.01, rtol=0)
    w.grad = torch.zeros(6, 16)  # no gradient, a momentum that has decayed to nothing: the decay alone remains
    opt.state[w]["momentum_buffer"].zero_()
    kept = w.detach().clone()
    opt.step()
    torch.testing.assert_close(w.detach(), kept * (1 - 0.1 * 0.05))


def test_a_skipped_step_changes_no_weight_and_no_state():
    model = tiny_gpt(seed=4)
    opt = optim.build(model, "muon", 1e-3, 0.1, (0.9, 0.95), "cpu")
    x = torch.randint(64, (2, 32), generator=torch.Generator().manual_seed(5))
    model(x, x)[1].backward()
    opt.step()  # a state to keep
    before = ({k: v.clone() for k, v in model.state_dict().items()},
              {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()})
    model(x, x)[1].backward()
    opt.found_inf = torch.ones(())
    opt.step()
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, before[1][id(p)][k]) for p, s in opt.state.items() for k, v in s.items())
    opt.found_inf = torch.zeros(())
    opt.step()
    assert not all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())


def test_build_gives_each_group_its_share_of_the_schedule():
    opt = optim.build(tiny_gpt(), "muon", 1e-3, 0.1, (0.9, 0.95), "cpu", muon_lr=0.02)
    assert [g["lr_scale"] for g in opt.param_groups] == pytest.approx([20.0, 1.0, 1.0])
    optim.set_lr(opt, 5e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 5e-4, 5e-4])


def test_a_capturable_optimizer_takes_the_schedule_through_its_rate_tensor_and_goes_back():
    # cuda_graph=True: the replayed step reads the rate from a tensor; a checkpoint from either kind resumes in both
    optimizer = optim.adamw(tiny_gpt(block_size=8), 0.1, 1e-2, (0.9, 0.95), "cpu")
    optim.set_capturable(optimizer, CPU, True)
    rates = [group["lr"] for group in optimizer.param_groups]
    optim.set_lr(optimizer, 2e-4)
    assert all(group["lr"] is rate and rate.item() == pytest.approx(2e-4) for group, rate in
               zip(optimizer.param_groups, rates, strict=True))  # filled in place: the graph keeps reading it
    assert all(group["capturable"] for group in optimizer.param_groups)
    optim.set_capturable(optimizer, CPU, False)
    back = [(group["lr"], group["capturable"]) for group in optimizer.param_groups]
    assert back == [(pytest.approx(2e-4), False)] * 2 and all(type(rate) is float for rate, _ in back)
    optim.set_lr(optimizer, 3e-4)
    assert [group["lr"] for group in optimizer.param_groups] == [3e-4, 3e-4]


def test_a_muon_run_resumes_exactly(char_data: CharData, tmp_path: Path):
    flags = {"optimizer": "muon", "eval_interval": 3, "learning_rate": 3e-3}
    whole = train.main(tiny_flags(char_data, tmp_path / "whole", max_iters=6, **flags))
    train.main(tiny_flags(char_data, tmp_path / "half", max_iters=3, **flags))
    shutil.copytree(tmp_path / "half", tmp_path / "resumed")
    resumed = train.main(tiny_flags(char_data, tmp_path / "resumed", max_iters=6, init_from="resume", **flags))
    assert resumed["train_loss"] == whole["train_loss"][3:]
    assert resumed["eval"] == whole["eval"]  # the resumed run evaluates at iter 3 too, where it starts


def test_a_muon_run_with_its_own_rates_and_modded_switches_resumes_exactly(char_data: CharData, tmp_path: Path):
    flags = {"optimizer": "muon", "eval_interval": 3, "learning_rate": 3e-3, "embed_lr": 0.05, "head_lr": 4e-3,
             "muon_weight_decay": 0.05, "tie_embeddings": False, "embed_norm": True, "attn_scale": 0.3,
             "unet_skips": True, "value_embeds": 1, "x0_mix": True, "norm": "rmsnorm", "pos_emb": "rope",
             "qk_norm": True}
    whole = train.main(tiny_flags(char_data, tmp_path / "whole", max_iters=6, **flags))
    train.main(tiny_flags(char_data, tmp_path / "half", max_iters=3, **flags))
    shutil.copytree(tmp_path / "half", tmp_path / "resumed")
    resumed = train.main(tiny_flags(char_data, tmp_path / "resumed", max_iters=6, init_from="resume", **flags))
    assert resumed["train_loss"] == whole["train_loss"][3:]
    assert resumed["eval"] == whole["eval"]


def test_a_resume_takes_the_rates_and_decay_its_settings_give(char_data: CharData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    flags = {"optimizer": "muon", "eval_interval": 2, "learning_rate": 1e-2, "tie_embeddings": False,
             "embed_lr": 0.05, "head_lr": 2e-3}
    train.main(tiny_flags(char_data, tmp_path, max_iters=2, **flags))
    built = []
    real_build = optim.build
    monkeypatch.setattr(optim, "build", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    changed = flags | {"learning_rate": 1e-3, "muon_lr": 0.05, "embed_lr": 0.2, "head_lr": 4e-3,
                       "muon_weight_decay": 0.1}
    train.main(tiny_flags(char_data, tmp_path, max_iters=3, init_from="resume", **changed))
    groups = built[-1].param_groups  # as the resumed run stepped with them: the schedule's rate times lr_scale
    assert [g["lr_scale"] for g in groups] == pytest.approx([50.0, 200.0, 4.0, 1.0])  # over learning_rate 1e-3
    assert groups[0]["weight_decay"] == 0.1 and built[-1].state  # the rates are the run's, the moments the checkpoint's


def test_a_resume_with_muon_s_groups_set_otherwise_names_the_settings(char_data: CharData, tmp_path: Path):
    flags = {"optimizer": "muon", "eval_interval": 2, "learning_rate": 1e-2, "tie_embeddings": False}
    train.main(tiny_flags(char_data, tmp_path, max_iters=2, **flags, head_lr=2e-3))
    with pytest.raises(train.UserError, match=r"has 4 parameter groups and this run's optimizer 3: embed_lr and "
                                                r"head_lr, set or not, decide Muon's groups; resume with them as the "
                                                r"run that saved it had them \(embed_lr=None, head_lr=0\.002\)$"):
        train.main(tiny_flags(char_data, tmp_path, max_iters=4, init_from="resume", **flags, head_lr=None))


def test_head_lr_with_a_tied_head_is_refused(char_data: CharData, tmp_path: Path):
    with pytest.raises(train.UserError, match=r"^head_lr needs an untied head \(tie_embeddings=False\)"):
        train.main(tiny_flags(char_data, tmp_path, max_iters=2, optimizer="muon", head_lr=1e-3))


def test_the_adamw_recipe_refuses_muon_s_rates_in_one_line(char_data: CharData, tmp_path: Path):
    with pytest.raises(train.UserError, match=r"^embed_lr, head_lr and muon_weight_decay are settings of "
                                                r"optimizer=muon"):
        train.main(tiny_flags(char_data, tmp_path, max_iters=2, embed_lr=0.1))
    with pytest.raises(train.UserError, match=r"^muon_weight_decay must be at least 0, got -0\.1$"):
        train.main(tiny_flags(char_data, tmp_path, max_iters=2, optimizer="muon", muon_weight_decay=-0.1))


def test_resuming_with_another_optimizer_is_one_line(char_data: CharData, tmp_path: Path):
    train.main(tiny_flags(char_data, tmp_path, max_iters=2, eval_interval=2))
    with pytest.raises(train.UserError, match=r"holds adamw's state, the settings ask for optimizer=muon: resume "
                                                r"with optimizer=adamw$"):
        train.main(tiny_flags(char_data, tmp_path, max_iters=4, init_from="resume", optimizer="muon"))
