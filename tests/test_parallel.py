"""parallel.py in one process: the layout of processes and its description, layouts and degrees refused in one
line, the rank-major row order of tensor parallelism and its way back, and checks that every process refuses
together (rank 0 saying why). The real launches are in test_ddp.py and test_sharded.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import parallel
import train
from configurator import UserError
from conftest import CharData, run_main, tiny_flags
from model import GPT, GPTConfig, resolve_config
from parallel import Layout

CPU = torch.device("cpu")
A_MESH = object()  # stands for a DeviceMesh: a layout with one is sharded


def layout(rank: int = 0, world: int = 1, tp: int = 1, sharded: bool = False) -> Layout:
    return Layout(rank, rank, world, CPU, distributed=world > 1, tp=tp, mesh=A_MESH if sharded else None)


@pytest.mark.parametrize(("world", "tp", "fsdp", "described"), [
    (1, 1, False, "1 process"), (8, 1, False, "DDP 8"), (2, 1, True, "FSDP 2"), (2, 2, False, "TP 2"),
    (4, 2, True, "FSDP 2 x TP 2")])
def test_a_layout_describes_itself(world: int, tp: int, fsdp: bool, described: str):
    assert layout(world=world, tp=tp, sharded=fsdp or tp > 1).describe(fsdp) == described


def test_a_process_reads_the_batches_of_its_data_parallel_share():
    # FSDP 2 x TP 2: ranks 0, 1 split one model and read share 0; ranks 2, 3 share 1
    places = [layout(rank, world=4, tp=2, sharded=True) for rank in range(4)]
    assert [(p.dp_rank, p.dp_world, p.master) for p in places] == [(0, 2, True), (0, 2, False), (1, 2, False),
                                                                   (1, 2, False)]


def test_one_process_without_torchrun_is_the_whole_layout():
    assert parallel.setup("cpu", "auto", 1, False, 40) == Layout(0, 0, 1, CPU, distributed=False)


def torchrun_env(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> list[str]:
    """As torchrun starts a process; returns the backends process groups are asked for (none is made)."""
    for key, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", world)):
        monkeypatch.setenv(key, str(value))
    backends: list[str] = []
    monkeypatch.setattr(parallel.dist, "init_process_group", lambda **kwargs: backends.append(kwargs["backend"]))
    return backends


@pytest.mark.parametrize("backend", ["auto", "gloo"])
def test_backend_auto_is_gloo_without_a_gpu(monkeypatch: pytest.MonkeyPatch, backend: str):
    backends = torchrun_env(monkeypatch, rank=1, world=2)
    placed = parallel.setup("cpu", backend, 1, False, 2)
    assert backends == ["gloo"]
    assert placed == Layout(1, 1, 2, CPU, distributed=True)


class GroupStarted(Exception):
    """Raised where a process group would be made: setup goes no further."""


@pytest.mark.parametrize(("device", "cuda", "backend"), [
    ("auto", True, "nccl"), ("cuda", True, "nccl"), ("cuda:1", True, "nccl"), ("cpu", True, "gloo"),
    ("auto", False, "gloo")])
def test_backend_auto_is_nccl_for_gpus_and_gloo_otherwise(monkeypatch: pytest.MonkeyPatch, device: str, cuda: bool,
                                                          backend: str):
    torchrun_env(monkeypatch, rank=0, world=2)
    monkeypatch.setattr(parallel.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(parallel.dist, "is_nccl_available", lambda: True)  # as a CUDA build of torch is

    def start(backend: str) -> None:
        raise GroupStarted(backend)

    monkeypatch.setattr(parallel.dist, "init_process_group", start)
    with pytest.raises(GroupStarted, match=f"^{backend}$"):
        parallel.setup(device, "auto", 1, False, 2)


@pytest.mark.parametrize(("world", "tp", "accum", "message"), [
    (2, 1, 3, r"gradient_accumulation_steps \(3\) must be divisible by the number of processes \(2\)"),
    (4, 2, 3, r"the number of data-parallel processes \(4 / tensor_parallel 2 = 2\)"),
    (4, 3, 4, r"tensor_parallel=3 must divide the number of processes \(4\)"),
])
def test_a_split_the_processes_cannot_share_is_said_by_rank_0_before_any_process_group(
        monkeypatch: pytest.MonkeyPatch, world: int, tp: int, accum: int, message: str):
    backends = torchrun_env(monkeypatch, rank=0, world=world)
    with pytest.raises(UserError, match=message):
        parallel.setup("cpu", "gloo", tp, True, accum)
    assert backends == []  # nothing waits on a peer
    backends = torchrun_env(monkeypatch, rank=1, world=world)
    with pytest.raises(UserError, match=r"^$"):  # the others leave silently
        parallel.setup("cpu", "gloo", tp, True, accum)
    assert backends == []


@pytest.mark.parametrize("rank", ["0", "1"])
def test_accumulation_that_processes_cannot_share_is_said_once_by_rank_0(char_data: CharData, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         rank: str):
    # train.py as torchrun starts 2 processes; the check comes before the process group
    for key, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(parallel.dist, "init_process_group", lambda **kwargs: pytest.fail("a process group was made"))
    flags = tiny_flags(char_data, tmp_path / "out", gradient_accumulation_steps=3, backend="gloo")
    expected = "" if rank == "1" else ("error: gradient_accumulation_steps (3) must be divisible by the number of "
                                       "processes (2)\n")  # rank 1 silent: rank 0 says it
    assert run_main(train, flags) == (2, "", expected)


@pytest.mark.parametrize("rank", ["0", "1"])
@pytest.mark.parametrize(("flag", "message"), [({"batch_size": 0}, "batch_size must be at least 1, got 0"),
                                                ({"target_val_loss": 0}, "target_val_loss must be above 0")])
def test_a_setting_every_process_refuses_is_said_once_by_rank_0(char_data: CharData, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, rank: str,
                                                                flag: dict, message: str):
    for key, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(parallel.dist, "init_process_group", lambda **kwargs: pytest.fail("a process group was made"))
    code, out, err = run_main(train, tiny_flags(char_data, tmp_path / "out", backend="gloo", **flag))
    assert (code, out) == (2, "")
    said = err.splitlines()[0] if err else ""
    assert said.startswith(f"error: {message}") == (rank == "0") and (rank == "0" or err == "")  # rank 1 silent


def test_a_check_every_process_makes_is_refused_together_rank_0_saying_why():
    def refuse(what: str) -> None:
        raise UserError(f"{what} is wrong")

    with pytest.raises(UserError, match=r"^this is wrong$"):
        parallel.refuse_together(layout(0, world=2), refuse, "this")
    with pytest.raises(UserError, match=r"^$"):
        parallel.refuse_together(layout(1, world=2), refuse, "this")
    parallel.refuse_together(layout(1, world=2), lambda: None)  # a check that passes: nothing raised


def test_what_only_rank_0_checks_is_decided_by_rank_0_alone():
    checked = []

    def refuse() -> None:
        checked.append(1)
        raise UserError("out_dir cannot hold checkpoints")

    with pytest.raises(UserError, match=r"^out_dir cannot hold checkpoints$"):
        parallel.rank_0_decides(layout(0), refuse)
    parallel.rank_0_decides(Layout(1, 1, 2, CPU, distributed=False), refuse)  # no group to hear rank 0 from
    assert checked == [1]  # another rank never makes rank 0's check itself


@pytest.mark.parametrize(("world", "tp", "fsdp", "distributed", "message"), [
    (1, 1, True, False, "fsdp=True needs several processes: start it with torchrun"),
    (1, 2, False, False, "tensor_parallel=2 needs several processes: start it with torchrun"),
    (2, 2, True, True, "fsdp=True shards over the data-parallel processes, and there is 1"),
    (4, 3, False, True, "tensor_parallel=3 must divide the number of processes (4)"),
    (4, 2, False, True, "tensor_parallel=2 on 4 processes needs fsdp=True"),
])
def test_a_layout_that_cannot_be_built_is_one_line(world: int, tp: int, fsdp: bool, distributed: bool, message: str):
    with pytest.raises(UserError, match=re.escape(message)):
        parallel.check_layout(world, tp, fsdp, distributed)


@pytest.mark.parametrize(("world", "tp", "fsdp"), [(1, 1, False), (2, 1, False), (2, 1, True), (2, 2, False),
                                                   (4, 2, True), (8, 4, True)])
def test_a_layout_that_can_be_built_passes(world: int, tp: int, fsdp: bool):
    parallel.check_layout(world, tp, fsdp, world > 1)


@pytest.mark.parametrize(("dtype", "fp8", "message"), [
    (torch.float16, False, "fsdp=True needs dtype bfloat16 or float32: float16's gradient scaler"),
    (torch.bfloat16, True, "fp8=True with fsdp=True is not supported")])
def test_what_a_sharded_model_does_not_combine_with_is_one_line(dtype: torch.dtype, fp8: bool, message: str,
                                                                monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(parallel, "check_fp8", lambda device: None)  # as on an FP8 GPU
    with pytest.raises(UserError, match=re.escape(message)):
        parallel.check_run(layout(world=2, sharded=True), dtype, True, 1, fp8)
    parallel.check_run(layout(world=2), dtype, False, 1, fp8)  # DDP takes either


@pytest.mark.parametrize(("config", "tp", "message"), [
    ({"preset": "gpt2-xl"}, 2, "tensor_parallel=2 must divide n_head (25)"),
    ({"n_head": 4, "n_kv_head": 2, "n_embd": 32}, 4, "tensor_parallel=4 must divide n_kv_head (2)"),
    ({"n_head": 4, "n_embd": 32, "vocab_size": 65}, 2, "must divide the vocabulary (padded to vocab_multiple) (65)"),
    ({"n_head": 4, "n_embd": 32, "vocab_size": 64, "qk_norm": True}, 2, "qk_norm=True with tensor_parallel=2 is not"),
])
def test_a_degree_that_does_not_divide_the_model_is_one_line(config: dict, tp: int, message: str):
    with pytest.raises(UserError, match=re.escape(message)):
        parallel.check_sizes(resolve_config(**config), tp)
    parallel.check_sizes(resolve_config(**config), 1)


def test_rank_major_rows_give_each_process_its_own_part_of_every_stacked_matrix():
    order = parallel.rank_major_rows([4, 2, 2], tp=2)  # q (4 rows), k, v (2 each)
    assert order.tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    config = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=16, vocab_size=32, block_size=8, mlp="swiglu")
    state = {"h.0.attn.c_attn.weight": torch.randn(32, 16), "h.0.mlp.c_fc.weight": torch.randn(2 * config.hidden, 16),
             "h.0.ln_1.weight": torch.randn(16)}
    there = parallel.reorder_rows(state, config, 2, to_rank_major=True)
    assert there["h.0.ln_1.weight"] is state["h.0.ln_1.weight"]
    half = config.hidden // 2  # process 0's rows of c_fc: the first half of W, then the first half of V
    assert torch.equal(there["h.0.mlp.c_fc.weight"][:2 * half],
                       torch.cat([state["h.0.mlp.c_fc.weight"][:half],
                                  state["h.0.mlp.c_fc.weight"][config.hidden:config.hidden + half]]))
    q, k, v = state["h.0.attn.c_attn.weight"].split([16, 8, 8])  # process 1's rows of c_attn: its q, k, v halves
    assert torch.equal(there["h.0.attn.c_attn.weight"][16:], torch.cat([q[8:], k[4:], v[4:]]))


@pytest.mark.parametrize(("model", "tp"), [
    ({"n_head": 4, "n_kv_head": 2, "mlp": "swiglu", "bias": True}, 2),
    ({"n_head": 4, "mlp": "gelu", "bias": True}, 4),
    ({"n_head": 8, "n_kv_head": 4, "mlp": "swiglu", "bias": False}, 4)])
def test_reorder_rows_round_trips_weights_and_optimizer_moments(model: dict, tp: int):
    config = GPTConfig(n_layer=2, n_embd=32, vocab_size=64, block_size=8, **model)
    torch.manual_seed(0)
    weights = {k: torch.randn_like(v) for k, v in GPT(config).state_dict().items()}
    moments = {k: {"step": torch.tensor(3.0), "exp_avg": torch.randn_like(v), "exp_avg_sq": torch.rand_like(v)}
               for k, v in weights.items()}
    for state in (weights, moments):
        there = parallel.reorder_rows(state, config, tp, to_rank_major=True)
        back = parallel.reorder_rows(there, config, tp, to_rank_major=False)
        moved = [k for k in state if k.endswith(("c_attn.weight", "c_attn.bias")) or
                 (config.mlp == "swiglu" and ".mlp.c_fc." in k)]
        assert moved and all(not torch.equal(flat(there[k]), flat(state[k])) for k in moved)
        assert all(torch.equal(flat(back[k]), flat(state[k])) for k in state)
    assert parallel.reorder_rows(weights, config, 1, to_rank_major=True) is weights  # one process: as it is


def flat(value: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """A weight, or a parameter's optimizer state as one tensor."""
    if isinstance(value, dict):
        return torch.cat([t.flatten() for t in value.values()])
    return value
