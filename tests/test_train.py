"""train.py: the lr schedule, the batch sampler, a tiny run that learns, checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import runtime
import sample
import train
from configurator import UserError
from model import GPTConfig
from conftest import CharData, Trained, tiny_flags, tiny_gpt

# ---------------------------------------------------------------------------------------------- lr schedule


def schedule(**overrides: object) -> train.TrainConfig:
    args = {"learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10, "lr_decay_iters": 110} | overrides
    return train.TrainConfig(**args)


def test_lr_warmup_is_linear_from_near_zero():
    cfg = schedule()
    lrs = [train.get_lr(it, cfg) for it in range(cfg.warmup_iters)]
    steps = np.diff(lrs)
    assert 0 < lrs[0] <= cfg.learning_rate / cfg.warmup_iters
    assert np.allclose(steps, steps[0], rtol=1e-9)
    assert steps[0] > 0


def test_lr_reaches_learning_rate_at_end_of_warmup():
    cfg = schedule()
    assert train.get_lr(cfg.warmup_iters, cfg) == pytest.approx(cfg.learning_rate, rel=1e-12)
    assert train.get_lr(cfg.warmup_iters - 1, cfg) < cfg.learning_rate
    # the warmup line lands exactly on learning_rate where the cosine starts: no jump
    step = train.get_lr(1, cfg) - train.get_lr(0, cfg)
    assert train.get_lr(cfg.warmup_iters - 1, cfg) + step == pytest.approx(cfg.learning_rate, rel=1e-12)


def test_lr_cosine_midpoint():
    cfg = schedule()
    mid = (cfg.warmup_iters + cfg.lr_decay_iters) // 2
    assert train.get_lr(mid, cfg) == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2, rel=1e-12)


def test_lr_decays_monotonically_to_min_lr():
    cfg = schedule()
    lrs = [train.get_lr(it, cfg) for it in range(cfg.warmup_iters, cfg.lr_decay_iters + 1)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    for it in (cfg.lr_decay_iters, cfg.lr_decay_iters + 1, 10 * cfg.lr_decay_iters):
        assert train.get_lr(it, cfg) == cfg.min_lr


def test_lr_constant_without_decay():
    cfg = schedule(decay_lr=False)
    assert {train.get_lr(it, cfg) for it in (0, 5, 10, 60, 110, 1000)} == {cfg.learning_rate}


# ---------------------------------------------------------------------------------------------- batches


def counting_file(tmp_path: Path, n: int = 1000) -> Path:
    """Token i at position i: every window says where it starts."""
    path = tmp_path / "count.bin"
    np.arange(n, dtype=np.uint16).tofile(path)
    return path


def test_batches_y_is_x_shifted_by_one(tmp_path: Path):
    path = counting_file(tmp_path)
    raw = np.fromfile(path, dtype=np.uint16).astype(np.int64)
    x, y = train.Batches(str(path), "uint16", 16, 8, 1000, seed=0).read(3)
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.int64
    for xr, yr in zip(x.numpy(), y.numpy()):
        start = xr[0]
        assert np.array_equal(xr, raw[start:start + 16])
        assert np.array_equal(yr, raw[start + 1:start + 17])


def test_batches_reach_the_last_token(tmp_path: Path):
    path = counting_file(tmp_path, n=20)
    batches = train.Batches(str(path), "uint16", 16, 64, 1000, seed=0)
    starts = {int(s) for k in range(4) for s in batches.read(k)[0][:, 0]}
    assert starts == set(range(4))  # every window of 17 tokens in 20, the last one included


def test_batches_are_a_function_of_seed_and_index(tmp_path: Path):
    path = str(counting_file(tmp_path))

    def batch(seed: int, k: int) -> torch.Tensor:
        return train.Batches(path, "uint16", 16, 8, 1000, seed=seed).read(k)[0]

    assert torch.equal(batch(1, 5), batch(1, 5))
    sampler = train.Batches(path, "uint16", 16, 8, 1000, seed=1)
    sampler.read(9)  # reading other batches first changes nothing
    assert torch.equal(sampler.read(5)[0], batch(1, 5))
    assert not torch.equal(batch(1, 5), batch(1, 6))
    assert not torch.equal(batch(1, 5), batch(2, 5))


def test_batches_refuse_token_ids_beyond_vocab(tmp_path: Path):
    path = tmp_path / "bad.bin"
    np.full(100, 7, dtype=np.uint16).tofile(path)
    train.Batches(str(path), "uint16", 16, 4, 8, seed=0).read(0)  # 7 < 8: fine
    with pytest.raises(UserError, match="token id 7 >= vocab_size 7"):
        train.Batches(str(path), "uint16", 16, 4, 7, seed=0).read(0)


def test_eval_windows_cover_a_small_split_exactly_once(tmp_path: Path):
    path = counting_file(tmp_path, n=100)  # 99 targets: 6 whole windows of 16, the last 3 tokens unread
    windows = train.Windows(str(path), "uint16", 16, 4, 1000, max_batches=10)
    assert windows.n_batches == 2
    xs, ys = zip(*(windows.read(k) for k in range(2)))
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(x[:6].flatten(), torch.arange(96)) and torch.equal(y[:6].flatten(), torch.arange(1, 97))
    assert (y[6:] == -1).all() and x.shape == (8, 16)  # the last batch filled out with ignored rows


def test_eval_windows_spread_over_a_large_split_in_the_same_places(tmp_path: Path):
    path = str(counting_file(tmp_path, n=1000))  # 62 windows of 16, 3 batches of 4 wanted
    windows = train.Windows(path, "uint16", 16, 4, 1000, max_batches=3)
    assert windows.n_batches == 3
    starts = [int(s) for k in range(3) for s in windows.read(k)[0][:, 0]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(s % 16 == 0 for s in starts) and min(gaps) >= 16 and max(gaps) - min(gaps) <= 16  # evenly spread
    assert starts[0] == 0 and starts[-1] >= 1000 - 2 * max(gaps)  # from the start to the end
    assert starts == [int(s) for k in range(3) for s in train.Windows(path, "uint16", 16, 4, 1000, 3).read(k)[0][:, 0]]


def test_estimate_loss_is_the_mean_token_loss_of_the_whole_split(trained: Trained):
    ckpt = checkpoint.load(str(trained.out_dir))
    model = checkpoint.model_from(ckpt).eval()
    T, vocab = ckpt["model_args"]["block_size"], ckpt["model_args"]["vocab_size"]
    cfg = train.TrainConfig(**ckpt["config"] | {"eval_iters": 1000, "batch_size": 3})  # 3 does not divide the split
    evals = {split: train.Windows(str(trained.data.dir / f"{split}.bin"), "uint16", T, 3, vocab, 1000)
             for split in ("train", "val")}
    losses = train.estimate_loss(model, evals, cfg, torch.device("cpu"), contextlib.nullcontext(), 0, 1)
    val = torch.from_numpy(np.fromfile(trained.data.dir / "val.bin", dtype=np.uint16).astype(np.int64))
    n = (len(val) - 1) // T
    assert n % 3  # the padding rows are exercised
    x, y = val[:n * T].view(n, T), val[1:n * T + 1].view(n, T)
    with torch.no_grad():
        logits = model(x, y)[0]
    exact = F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    assert losses["val"] == pytest.approx(exact, rel=1e-5)


# ---------------------------------------------------------------------------------------------- training


def test_tiny_run_loss_falls(char_data: CharData, tmp_path: Path):
    history = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=60, eval_interval=60, eval_at_start=True))
    losses = [loss for _, loss in history["train_loss"]]
    assert [it for it, _ in history["train_loss"]] == list(range(1, 61))
    assert all(math.isfinite(v) for v in losses)
    start, end = losses[0], np.mean(losses[-5:])  # from ln(vocab) ~ 4.1 to below the unigram entropy ~ 3.3
    assert end < start - 0.75, (start, end)
    (it0, _, val0), (it1, _, val1) = history["eval"]
    assert (it0, it1) == (0, 60)
    assert val1 < val0 - 0.75, (val0, val1)


@pytest.mark.parametrize("at_start", [False, True])
def test_evaluation_before_the_first_step_only_when_asked(char_data: CharData, tmp_path: Path, at_start: bool):
    history = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=4, eval_interval=2,
                                    eval_at_start=at_start))
    assert [it for it, _, _ in history["eval"]] == [0, 2, 4] if at_start else [2, 4]
    # a resumed run evaluates where it starts (a stop may have come between a step and its evaluation)
    resumed = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=6, eval_interval=2, init_from="resume",
                                    eval_at_start=at_start))
    assert [it for it, _, _ in resumed["eval"]] == [4, 6]


def test_checkpoint_is_plain_data_without_prefixes(trained: Trained):
    ckpt = torch.load(trained.out_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["model"] if k.startswith(("_orig_mod.", "module."))]
    assert {"model", "optimizer", "scaler", "model_args", "config", "meta", "iter_num", "best_val_loss", "batch_pos",
            "rng"} <= set(ckpt)


def test_checkpoint_records_the_run(trained: Trained):
    ckpt = checkpoint.load(str(trained.out_dir))
    assert ckpt["iter_num"] == 12
    assert ckpt["batch_pos"] == 12  # gradient_accumulation_steps=1: one batch per iteration
    assert ckpt["meta"] == trained.data.meta
    assert ckpt["config"]["max_iters"] == 12
    padded = -(-trained.data.meta["vocab_size"] // 64) * 64  # the char vocab padded to a multiple of 64
    expected = {"vocab_size": padded, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0,
                "bias": True}
    assert ckpt["model_args"] == dataclasses.asdict(GPTConfig(**expected))  # every switch at its GPT-2 default
    assert [it for it, _, _ in trained.history["eval"]] == [6, 12]  # none before the first step
    assert ckpt["best_val_loss"] == min(val for _, _, val in trained.history["eval"])
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)


def test_checkpoint_model_from_reproduces_the_trained_model(trained: Trained):
    ckpt = checkpoint.load(str(trained.out_dir))
    model = checkpoint.model_from(ckpt)
    cfg = train.TrainConfig(**ckpt["config"])
    data_dir = trained.data.dir
    vocab = ckpt["model_args"]["vocab_size"]
    evals = {split: train.Windows(str(data_dir / f"{split}.bin"), "uint16", 32, 8, vocab, cfg.eval_iters)
             for split in ("train", "val")}
    losses = train.estimate_loss(model, evals, cfg, torch.device("cpu"), runtime.autocast(torch.device("cpu"),
                                 torch.float32), 0, 1)
    _, train_loss, val_loss = trained.history["eval"][-1]
    assert (losses["train"], losses["val"]) == pytest.approx((train_loss, val_loss), rel=1e-6)


def test_model_from_leaves_the_random_generator_as_it_was(trained: Trained):
    ckpt = checkpoint.load(str(trained.out_dir))
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    checkpoint.model_from(ckpt)  # draws initial weights, which the checkpoint then replaces
    assert torch.equal(torch.rand(4), expected)  # so sample.py's seed, set before loading, decides the samples


def test_a_compiled_model_without_dropout_is_evaluated_through_its_training_graph(trained: Trained):
    # the same losses as in eval mode without gradients, and nothing left behind: no gradients, train mode after
    ckpt = checkpoint.load(str(trained.out_dir))
    model = checkpoint.model_from(ckpt)
    vocab = ckpt["model_args"]["vocab_size"]
    evals = {split: train.Windows(str(trained.data.dir / f"{split}.bin"), "uint16", 32, 8, vocab, 2)
             for split in ("train", "val")}
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append((module.training, torch.is_grad_enabled())))
    ctx = runtime.autocast(torch.device("cpu"), torch.float32)
    losses = {}
    for compiled in (False, True):
        cfg = train.TrainConfig(**ckpt["config"] | {"compile": compiled, "dropout": 0.0})
        losses[compiled] = train.estimate_loss(model, evals, cfg, torch.device("cpu"), ctx, 0, 1)
        assert model.training
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert set(seen) == {(False, False), (True, True)}  # eval mode without gradients; the training graph's mode
    assert all(p.grad is None for p in model.parameters())


def test_cuda_graph_where_it_cannot_capture_trains_as_without_it_and_says_why(char_data: CharData, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]):
    graphed = train.main(tiny_flags(char_data, tmp_path / "a", cuda_graph=True))
    assert "cuda_graph=True: the step runs without a CUDA graph here: no CUDA device (cpu)" in capsys.readouterr().out
    plain = train.main(tiny_flags(char_data, tmp_path / "b"))
    assert graphed["train_loss"] == plain["train_loss"]
    assert checkpoint.load(str(tmp_path / "a"))["config"]["cuda_graph"] is False


@pytest.mark.parametrize(("settings", "blocker"), [
    ({}, None), ({"compile": True}, None), ({"activation_checkpointing": True}, "activation_checkpointing"),
    ({"dtype": "float16"}, "float16")])
def test_what_keeps_a_cuda_graph_from_capturing_the_step(settings: dict, blocker: str | None):
    cfg = train.TrainConfig(**{"compile": False} | settings)
    gpu = train.Process(0, 0, 1, torch.device("cuda"), distributed=False)
    dtype = torch.float16 if cfg.dtype == "float16" else torch.bfloat16
    found = train.graph_blocker(cfg, gpu, dtype)
    assert found is None if blocker is None else found.startswith(blocker)
    assert train.graph_blocker(cfg, train.Process(0, 0, 1, torch.device("cpu"), False), dtype) is not None


def test_a_checkpoint_resumes_with_this_machines_way_of_stepping(char_data: CharData, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    # saved by the plain AdamW (a CPU), resumed where the fused one steps (a GPU; fused AdamW runs on CPUs too)
    flags = tiny_flags(char_data, tmp_path / "out", max_iters=4, eval_interval=4)
    train.main(flags)
    plain = train.main(tiny_flags(char_data, tmp_path / "plain", max_iters=6, eval_interval=4))
    real = train.GPT.configure_optimizers

    def fused(self: train.GPT, *args: object) -> torch.optim.AdamW:
        optimizer = real(self, *args)
        return torch.optim.AdamW(optimizer.param_groups, fused=True)

    monkeypatch.setattr(train.GPT, "configure_optimizers", fused)
    resumed = train.main(tiny_flags(char_data, tmp_path / "out", max_iters=6, eval_interval=4, init_from="resume"))
    assert [it for it, _ in resumed["train_loss"]] == [5, 6]
    for (_, ours), (_, theirs) in zip(resumed["train_loss"], plain["train_loss"][4:], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-4)  # the same update, by another kernel


def test_a_capturable_optimizer_takes_the_schedule_through_its_rate_tensor_and_goes_back(trained: Trained):
    # cuda_graph=True: the replayed step reads the rate from a tensor; a checkpoint from either kind resumes in both
    model = checkpoint.model_from(checkpoint.load(str(trained.out_dir)))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    train.set_capturable(optimizer, torch.device("cpu"), True)
    rates = [group["lr"] for group in optimizer.param_groups]
    train.set_lr(optimizer, 2e-4)
    assert all(group["lr"] is rate and rate.item() == pytest.approx(2e-4) for group, rate in
               zip(optimizer.param_groups, rates, strict=True))  # filled in place: the graph keeps reading it
    assert all(group["capturable"] for group in optimizer.param_groups)
    train.set_capturable(optimizer, torch.device("cpu"), False)
    back = [(group["lr"], group["capturable"]) for group in optimizer.param_groups]
    assert back == [(pytest.approx(2e-4), False)] * 2 and all(type(rate) is float for rate, _ in back)
    train.set_lr(optimizer, 3e-4)
    assert [group["lr"] for group in optimizer.param_groups] == [3e-4, 3e-4]


def test_checkpoint_model_from_gives_identical_logits(trained: Trained):
    ckpt = checkpoint.load(str(trained.out_dir))
    a, b = checkpoint.model_from(ckpt).eval(), checkpoint.model_from(ckpt).eval()
    idx = torch.randint(0, 60, (2, 32))
    with torch.no_grad():
        logits = a(idx)[0]
    assert torch.equal(logits, b(idx)[0])
    assert not torch.equal(logits, train.GPT(train.GPTConfig(**ckpt["model_args"])).eval()(idx)[0])


def test_save_leaves_no_temporary_files(tmp_path: Path):
    checkpoint.save({"x": torch.ones(3)}, str(tmp_path))
    checkpoint.save({"x": torch.zeros(3)}, str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert torch.equal(torch.load(tmp_path / "ckpt.pt", weights_only=True)["x"], torch.zeros(3))


def test_resume_is_exact(char_data: CharData, tmp_path: Path):
    common = {"dropout": 0.1, "eval_interval": 4, "always_save_checkpoint": True, "decay_lr": True,
              "warmup_iters": 2, "lr_decay_iters": 8, "min_lr": 1e-3, "gradient_accumulation_steps": 2}
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=8, **common))
    out_dir = tmp_path / "resumed"
    first = train.main(tiny_flags(char_data, out_dir, max_iters=4, **common))
    second = train.main(tiny_flags(char_data, out_dir, max_iters=8, init_from="resume", **common))
    assert first["train_loss"] == straight["train_loss"][:4]
    assert second["train_loss"] == straight["train_loss"][4:]  # iterations 5..8, bit for bit
    assert second["eval"][-1] == straight["eval"][-1]
    assert checkpoint.load(str(out_dir))["iter_num"] == 8


def test_resume_refuses_a_shape_other_than_the_checkpoints(trained: Trained, tmp_path: Path):
    out_dir = tmp_path / "out"
    shutil.copytree(trained.out_dir, out_dir)
    before = (out_dir / "ckpt.pt").read_bytes()
    flags = tiny_flags(trained.data, out_dir, max_iters=13, init_from="resume", n_layer=3, n_embd=48)
    with pytest.raises(UserError, match="has n_layer=2, the settings ask for n_layer=3"):
        train.main(flags)
    assert (out_dir / "ckpt.pt").read_bytes() == before  # the checkpoint is untouched


@pytest.mark.slow
def test_compiled_run(char_data: CharData, tmp_path: Path, recwarn: pytest.WarningsRecorder):
    flags = {"max_iters": 2, "eval_interval": 2, "n_layer": 1}  # one layer: the compile takes half the time
    history = train.main(tiny_flags(char_data, tmp_path / "out", compile=True, **flags))
    assert not [str(w.message) for w in recwarn if "torch.compile failed" in str(w.message)]
    eager = train.main(tiny_flags(char_data, tmp_path / "eager", compile=False, **flags))
    assert [it for it, _ in history["train_loss"]] == [1, 2]
    for (_, compiled_loss), (_, eager_loss) in zip(history["train_loss"], eager["train_loss"], strict=True):
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)  # the same model, fused kernels
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["model"] if k.startswith("_orig_mod.")]


def test_wandb_logs_offline(char_data: CharData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """wandb_log=True with WANDB_MODE=offline writes a local run holding the eval metrics."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train.main(tiny_flags(char_data, tmp_path / "out", max_iters=2, eval_interval=1, wandb_log=True,
                          wandb_project="test", wandb_run_name="tiny"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the run holds no logged data"


class RecordingBatches:
    """A batch source that records the batch numbers asked for; batch k is a function of k."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        self.asked.append(k)
        x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(k))
        return x, x


def test_a_rank_reads_every_world_th_batch():
    # rank 1 of 2 processes, 3 micro-steps per iteration from global batch position 12: batches 12 + m * 2 + 1,
    # and the next iteration's first (12 + 3 * 2 + 1 = 19) read ahead while the device works
    model = tiny_gpt(block_size=8).train()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    data = RecordingBatches()
    first = data.get(13, torch.device("cpu"))
    _, _, following = train.train_step(model, optimizer, scaler, contextlib.nullcontext(), data, index=13, stride=2,
                                       batch=first, accum=3, grad_clip=1.0)
    assert data.asked == [13, 15, 17, 19]
    assert torch.equal(following[0], RecordingBatches().get(19, torch.device("cpu"))[0])


def test_latest_and_best_checkpoints(char_data: CharData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # evaluations at 2, 4, 6 with scripted val losses 3.0, 2.0, 2.5: best.pt holds iteration 4, ckpt.pt 6
    scripted = iter([3.0, 2.0, 2.5])
    monkeypatch.setattr(train, "estimate_loss", lambda *args: {"train": 1.0, "val": next(scripted)})
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, max_iters=6, eval_interval=2))
    assert checkpoint.load(str(out_dir))["iter_num"] == 6
    assert checkpoint.load(str(out_dir), which="best")["iter_num"] == 4
    assert sorted(p.name for p in out_dir.iterdir()) == ["best.pt", "ckpt.pt"]
    best = sample.load(sample.SampleConfig(out_dir=str(out_dir)), torch.device("cpu"), torch.float32)[0]
    latest = sample.load(sample.SampleConfig(out_dir=str(out_dir), checkpoint="latest"), torch.device("cpu"),
                         torch.float32)[0]
    weights = checkpoint.load(str(out_dir), which="best")["model"]["transformer.h.0.attn.c_attn.weight"]
    assert torch.equal(best.transformer.h[0].attn.c_attn.weight, weights)  # sample.py reads best.pt by default
    assert not torch.equal(latest.transformer.h[0].attn.c_attn.weight, weights)
    with pytest.raises(UserError, match="checkpoint must be best or latest, got 'newest'"):
        checkpoint.load(str(out_dir), which="newest")


def test_the_best_is_a_second_name_for_the_latest_when_they_are_one(tmp_path: Path):
    checkpoint.save({"x": torch.ones(3)}, str(tmp_path), best=True)
    assert os.path.samefile(tmp_path / "ckpt.pt", tmp_path / "best.pt")  # one write, one copy on disk
    checkpoint.save({"x": torch.zeros(3)}, str(tmp_path))
    assert torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["x"], torch.ones(3))
    assert torch.equal(torch.load(tmp_path / "ckpt.pt", weights_only=True)["x"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ckpt.pt"]  # no temporary file left
