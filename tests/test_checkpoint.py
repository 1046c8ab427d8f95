"""checkpoint.py: a checkpoint is plain data (a Header beside the weights and optimizer state) that loads with
weights_only=True; saves are atomic; the latest and the best are found by name; a foreign or damaged file is
refused in one line; a sharded checkpoint converts to the single
file it stands for; and a checkpoint written before the refactor (tests/fixtures/checkpoint_51427ac) resumes and
samples exactly as the code that wrote it did."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import evaluate
import optim
import sample
import train
from checkpoint import Checkpoint, Header
from configurator import UserError
from conftest import REPO_ROOT, Trained, make_char_dataset, ready_to_decode, run_main, tiny_flags, tiny_gpt
from dataloader import EvalBatches
from model import GPT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "checkpoint_51427ac"
CHARS = "".join(chr(ord("A") + i) for i in range(40))
META = {"tokenizer": "char", "vocab_size": 40, "dtype": "uint16", "eot_id": None, "chars": CHARS}


def trained_weights(seed: int = 3) -> GPT:
    """A tiny model whose weights are not any seed's initial draw: a model built from scratch cannot match it."""
    model = tiny_gpt(seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def small_checkpoint(model: GPT, iter_num: int = 1, meta: dict | None = META) -> Checkpoint:
    return Checkpoint("", Header(asdict(model.config), iter_num, meta), model.state_dict(), {"state": {}})


def logits(model: GPT) -> torch.Tensor:
    idx = torch.arange(64).view(2, 32) % 40  # ids every vocabulary here has
    with torch.no_grad():
        return model.eval()(idx)[0]  # (2, 32, vocab)


def test_a_checkpoint_is_plain_data_with_the_keys_it_always_had(trained: Trained):
    ckpt = torch.load(trained.out_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["model"] if k.startswith(("_orig_mod.", "module."))]
    before = torch.load(FIXTURE / "ckpt.pt", map_location="cpu", weights_only=True)  # written before the refactor
    assert set(ckpt) == set(before) | {"tensor_parallel", "provenance", "evaluation"}  # new fields; None ones left out
    assert set(ckpt) <= {f.name for f in fields(Header)} | {"model", "optimizer"}


def test_the_header_round_trips_through_a_weights_only_load(tmp_path: Path):
    header = Header({"n_layer": 2, "vocab_size": 64}, iter_num=7, meta=META, config={"learning_rate": 1e-3},
                    best_val_loss=2.5, batch_pos=56, rng={"torch": torch.get_rng_state(), "cuda": None},
                    scaler={"scale": 65536.0}, tensor_parallel=2, rng_ranks=[{"torch": torch.ones(2)}],
                    evaluation={"iter": 7, "val": 2.5, "val_bpb": 1.1})
    checkpoint.save(Checkpoint("", header, {"w": torch.ones(2)}, {"state": {}}), str(tmp_path))
    data = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    back = Header.from_dict(data, "ckpt.pt")
    assert torch.equal(back.rng["torch"], header.rng["torch"])
    assert torch.equal(back.rng_ranks[0]["torch"], torch.ones(2))
    plain = {f.name for f in fields(Header)} - {"rng", "rng_ranks"}
    assert {k: getattr(back, k) for k in plain} == {k: getattr(header, k) for k in plain}


def test_a_saved_model_is_built_again_with_its_very_logits(tmp_path: Path):
    model = trained_weights()
    expected = logits(model)  # the model that was saved: the oracle
    checkpoint.save(small_checkpoint(model), str(tmp_path))
    built = checkpoint.read(str(tmp_path)).build_model()
    assert torch.equal(logits(built), expected)
    assert not torch.equal(logits(tiny_gpt(seed=3)), expected)  # not the initial draw that building makes


def test_build_model_leaves_the_random_generator_as_it_was(trained: Trained):
    ckpt = checkpoint.read(str(trained.out_dir))
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    ckpt.build_model()  # draws initial weights, which the checkpoint then replaces
    assert torch.equal(torch.rand(4), expected)  # so sample.py's seed, set before loading, decides the samples


def test_the_built_model_evaluates_as_the_trained_run_did(trained: Trained):
    ckpt = checkpoint.read(str(trained.out_dir))
    model = ckpt.build_model()
    T, vocab = ckpt.header.model_args["block_size"], ckpt.header.model_args["vocab_size"]
    evals = {split: EvalBatches(str(trained.data.dir / f"{split}.bin"), "uint16", T, 8, vocab,
                                ckpt.header.config["eval_iters"]) for split in ("train", "val")}
    losses = evaluate.estimate_loss(model, evals, torch.device("cpu"), contextlib.nullcontext())
    _, train_loss, val_loss = trained.history["eval"][-1]  # the run's own evaluation of its live model
    assert (losses["train"], losses["val"]) == pytest.approx((train_loss, val_loss), rel=1e-6)


def test_save_leaves_no_temporary_files(tmp_path: Path):
    checkpoint.save(small_checkpoint(tiny_gpt(), 1), str(tmp_path))
    checkpoint.save(small_checkpoint(tiny_gpt(), 2), str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 2


def test_the_best_is_a_second_name_for_the_latest_when_they_are_one(tmp_path: Path):
    checkpoint.save(small_checkpoint(tiny_gpt(), 1), str(tmp_path), best=True)
    assert os.path.samefile(tmp_path / "ckpt.pt", tmp_path / "best.pt")  # one write, one copy on disk
    checkpoint.save(small_checkpoint(tiny_gpt(), 2), str(tmp_path))
    assert torch.load(tmp_path / "best.pt", weights_only=True)["iter_num"] == 1
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ckpt.pt"]  # no temporary file left


def test_read_finds_the_latest_or_the_best(tmp_path: Path):
    with pytest.raises(UserError, match=r"no checkpoint at .*ckpt\.pt: train one first"):
        checkpoint.read(str(tmp_path))
    checkpoint.save(small_checkpoint(tiny_gpt(), 4), str(tmp_path))  # no best.pt: the latest stands in
    assert checkpoint.read(str(tmp_path), which="best").header.iter_num == 4
    checkpoint.save(small_checkpoint(tiny_gpt(), 6), str(tmp_path), best=True)
    checkpoint.save(small_checkpoint(tiny_gpt(), 8), str(tmp_path))
    assert checkpoint.read(str(tmp_path)).header.iter_num == 8
    assert checkpoint.read(str(tmp_path), which="best").header.iter_num == 6
    assert checkpoint.locate(str(tmp_path), "best") == str(tmp_path.resolve() / "best.pt")
    with pytest.raises(UserError, match="checkpoint must be best or latest, got 'newest'"):
        checkpoint.read(str(tmp_path), which="newest")


def test_read_leaves_the_optimizer_state_unless_asked(tmp_path: Path):
    checkpoint.save(small_checkpoint(tiny_gpt()), str(tmp_path))
    assert checkpoint.read(str(tmp_path)).optimizer is None
    assert checkpoint.read(str(tmp_path), optimizer=True).optimizer == {"state": {}}


FULL_DISK = {  # what a save meets on a full disk: an OSError, or torch's zip writer's RuntimeError
    "oserror": (OSError(28, "No space left on device"), r"No space left on device"),
    "torch": (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1152 vs 1046\nmore"),
              r"the write stopped short; is the disk full\? \(\[enforce fail at inline_container\.cc:664\] \. "
              r"unexpected pos 1152 vs 1046\)")}


@pytest.mark.parametrize("previous", [True, False])
@pytest.mark.parametrize("raised", ["oserror", "torch"])
def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      previous: bool, raised: str):
    if previous:
        checkpoint.save(small_checkpoint(tiny_gpt(), 1), str(tmp_path), best=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}  # ckpt.pt and best.pt, or nothing
    error, says = FULL_DISK[raised]

    def crash(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    said = "the previous one is left as it was" if previous else "there is none yet"
    with pytest.raises(UserError, match=rf"^could not write a checkpoint to .*ckpt\.pt \({says}\); {said}$"):
        checkpoint.save(small_checkpoint(tiny_gpt(), 2), str(tmp_path), best=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_sharded_save_short_of_room_says_so():
    # DCP gathers each process's failure into a CheckpointException; its writer's short write is torch's zip error
    from torch.distributed.checkpoint.api import CheckpointException
    error, says = FULL_DISK["torch"]
    failed = CheckpointException("save failed", {1: (error, None)})
    assert re.fullmatch(rf"could not write a checkpoint to out/ckpt\.dcp \({says}\); there is none yet",
                        checkpoint.save_failed("out/ckpt.dcp", failed))


@pytest.mark.parametrize(("content", "message"), [
    ({"weights": torch.ones(2)}, "is not one of ours: missing model_args, iter_num"),
    ([1, 2, 3], "is not one of ours: missing model_args, iter_num"),
    ({"model_args": {}, "iter_num": 3}, "is not one of ours: missing model"),
    ("random bytes", r"is corrupt or truncated \("),
    ("half of one", r"is corrupt or truncated \(")])
def test_a_foreign_or_damaged_file_is_refused_in_one_line(trained: Trained, tmp_path: Path, content: object,
                                                          message: str):
    path = tmp_path / "ckpt.pt"
    if content == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif content == "half of one":
        whole = (trained.out_dir / "ckpt.pt").read_bytes()
        path.write_bytes(whole[:len(whole) // 2])
    else:
        torch.save(content, path)
    with pytest.raises(UserError, match=f"^checkpoint {path} {message}") as refused:
        checkpoint.read(str(tmp_path))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("meta", "message"), [
    (None, "does not record its tokenizer; refusing to guess one"),
    ({"vocab_size": 40}, "does not record its tokenizer; refusing to guess one"),
    (META | {"tokenizer": "sentencepiece"}, "records a tokenizer that cannot be built: unknown tokenizer "
                                            "'sentencepiece'"),
    (META | {"chars": "abc"}, "records a tokenizer that cannot be built: 3 chars for vocab_size 40")])
def test_a_checkpoint_without_a_tokenizer_it_can_build_is_refused_rather_than_guessed(tmp_path: Path,
                                                                                     meta: dict | None, message: str):
    checkpoint.save(small_checkpoint(tiny_gpt(), meta=meta), str(tmp_path))
    with pytest.raises(UserError, match=rf"^checkpoint {re.escape(str(tmp_path.resolve() / 'ckpt.pt'))} "
                                        rf"{re.escape(message)}$"):
        ready_to_decode(str(tmp_path))


def test_a_sharded_checkpoint_converts_to_the_single_file_it_was_saved_from(trained: Trained, tmp_path: Path,
                                                                           one_process_group: None):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    original = checkpoint.read(str(trained.out_dir), optimizer=True)
    model = original.build_model()
    optimizer = optim.adamw(model, 0.1, 1e-3, (0.9, 0.99), "cpu")
    optimizer.load_state_dict(original.optimizer)
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    out = tmp_path / "out"
    out.mkdir()
    checkpoint.save_sharded(state, original.header, str(out), best=True, rank=0)
    sharded = checkpoint.read(str(out))
    assert os.path.isdir(sharded.path)  # the directory ckpt.dcp points to, read whole
    assert all(torch.equal(sharded.model[k], v) for k, v in original.model.items())
    assert run_main(checkpoint, [f"--out_dir={out}"])[0] == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("ckpt-")) == [
        "best.dcp", "best.pt", "ckpt.dcp", "ckpt.pt"]  # the sharded checkpoint is kept
    single = torch.load(out / "ckpt.pt", weights_only=True)
    saved = torch.load(trained.out_dir / "ckpt.pt", weights_only=True)  # the oracle: the file it came from
    assert single.keys() == saved.keys() and single["iter_num"] == saved["iter_num"]
    assert all(torch.equal(single["model"][k], v) for k, v in saved["model"].items())
    assert single["optimizer"]["param_groups"] == saved["optimizer"]["param_groups"]
    assert single["optimizer"]["state"].keys() == saved["optimizer"]["state"].keys()
    for i, moments in saved["optimizer"]["state"].items():
        assert all(torch.equal(single["optimizer"]["state"][i][k], v) for k, v in moments.items())
    assert checkpoint.locate(str(out)).endswith("ckpt.pt")  # the one written last is read


def test_the_conversion_of_a_folder_without_a_sharded_checkpoint_is_one_line(trained: Trained):
    rc, _, err = run_main(checkpoint, [f"--out_dir={trained.out_dir}"])
    assert rc == 2 and err == f"error: no sharded checkpoint in {trained.out_dir} (ckpt.dcp, best.dcp)\n"


def test_a_failed_sharded_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              one_process_group: None):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    (tmp_path / "ckpt-1000-keep").mkdir()  # a folder of the user's: not one of ours to prune
    state = {"model": {"w": torch.ones(2)}}
    checkpoint.save_sharded(state, Header({}, 1), str(tmp_path), best=False, rank=0)
    first = (tmp_path / "ckpt.dcp").resolve()

    def full_disk(*args: object, **kwargs: object) -> None:  # as DCP reports a failure on one process
        raise CheckpointException("save", {0: (OSError(28, "No space left on device"), [])})

    monkeypatch.setattr(dcp, "save", full_disk)
    with pytest.raises(UserError, match=r"could not write a checkpoint to .*ckpt\.dcp \(No space left on device\); "
                                        r"the previous one is left as it was"):
        checkpoint.save_sharded(state, Header({}, 2), str(tmp_path), best=False, rank=0)
    assert (tmp_path / "ckpt.dcp").resolve() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.dcp", first.name, "ckpt-1000-keep"])
    assert checkpoint.read_header(str(tmp_path / "ckpt.dcp")) == Header({}, 1)


def test_a_checkpoint_from_before_the_refactor_resumes_and_samples_as_it_did(tmp_path: Path):
    # ckpt.pt at iteration 6 of conftest's tiny run, and what the code that wrote it (51427ac) made of it: see make.py
    expected = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
    data = make_char_dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(FIXTURE / "ckpt.pt", out / "ckpt.pt")
    samples = sample.main([f"--out_dir={out}", "--device=cpu", "--num_samples=2", "--max_new_tokens=40", "--seed=7",
                           "--start=MENENIUS:", "--stream=False", "--checkpoint=latest"])
    assert samples == expected["samples_latest"]
    resumed = train.main(tiny_flags(data, out, max_iters=9, eval_interval=3, init_from="resume"))
    # the losses were written on another CPU, whose float kernels may round differently in the last bits: equal to
    # float32 rounding, a relative 1e-5, which is far inside what a misread weight, optimizer state or data
    # position would change (the loss moves by tenths from one step to the next); the samples are characters drawn
    # from those weights, the same wherever the draws do not sit on a rounding's edge
    assert [it for it, _ in resumed["train_loss"]] == [it for it, _ in expected["resume_train_loss"]]
    assert [loss for _, loss in resumed["train_loss"]] == pytest.approx(
        [loss for _, loss in expected["resume_train_loss"]], rel=1e-5, abs=0)
    assert [it for it, *_ in resumed["eval"]] == [it for it, *_ in expected["resume_eval"]]
    assert [losses for _, *losses in resumed["eval"]] == [
        pytest.approx(losses, rel=1e-5, abs=0) for _, *losses in expected["resume_eval"]]


@pytest.mark.parametrize(("change", "message"), [
    ({"model_args": {"n_wings": 3}}, r" describes a model this code cannot build: .*unexpected keyword argument "
                                     r"'n_wings'"),
    ({"model_args": {"n_embd": 64}}, r"'s weights do not fit the model its model_args describe: size mismatch for "
                                     r"transformer\.wte\.weight")])
def test_a_checkpoint_whose_model_args_or_weights_are_foreign_is_one_line(trained: Trained, tmp_path: Path,
                                                                          change: dict, message: str):
    ckpt = torch.load(trained.out_dir / "ckpt.pt", weights_only=True)
    ckpt["model_args"] = ckpt["model_args"] | change["model_args"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=rf"^checkpoint {re.escape(str(tmp_path / 'ckpt.pt'))}{message}"):
        ready_to_decode(str(tmp_path))
    code, _, err = run_main("sample.py", [f"--out_dir={tmp_path}", "--device=cpu", "--max_new_tokens=2"])
    assert code == 2 and err.count("\n") == 1
