"""safeload.py: no file the project reads runs code. A pickle that would call a function (os.mkdir here, whose
only effect is a directory we look for) is planted in every checkpoint form, ckpt.pt, best.pt, a sharded
checkpoint's header.pt, .metadata and shard values, and each reader refuses it in one line with nothing run."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict

import checkpoint
import safeload
import sample
from configurator import UserError
from conftest import Trained, run_main


class Planted:
    """Pickles as a call of os.mkdir(path): unpickled by a plain loader, it makes that directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.path),)


def test_the_plain_pickle_would_run_it_and_ours_refuses_it_in_one_line(tmp_path: Path):
    data = pickle.dumps({"model": Planted(tmp_path / "ran")})
    with pytest.raises(safeload.Refused, match=r"^it names posix\.mkdir, which a file of this kind never holds "
                                               r"\(it could run code\)$"):
        safeload.loads(data)
    assert not (tmp_path / "ran").exists()
    pickle.loads(data)  # the control: the planted pickle does run code when loaded plainly
    assert (tmp_path / "ran").is_dir()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_plain_data_and_dcp_metadata_load_as_pickle_loads_them(tmp_path: Path):
    plain = {"a": [1, 2.5, "x", None, (True, b"y")], 3: {"z"}}
    assert safeload.loads(pickle.dumps(plain)) == plain
    dcp.save({"w": torch.randn(3, 4, dtype=torch.bfloat16), "lr": 0.1, "name": "x"}, checkpoint_id=tmp_path,
             no_dist=True)
    data = (tmp_path / ".metadata").read_bytes()
    ours, theirs = safeload.loads(data, safeload.DCP_METADATA), pickle.loads(data)
    assert type(ours) is type(theirs) and ours.state_dict_metadata == theirs.state_dict_metadata
    assert ours.storage_data == theirs.storage_data


def sharded_copy(trained: Trained, out: Path, extra: dict | None = None) -> Path:
    """trained's checkpoint as a sharded one in out (extra: more values in its model state); its directory."""
    model = checkpoint.read(str(trained.out_dir)).build_model()
    state = {"model": get_model_state_dict(model) | (extra or {})}
    out.mkdir()
    checkpoint.save_sharded(state, checkpoint.read(str(trained.out_dir)).header, str(out), best=False, rank=0)
    return (out / "ckpt.dcp").resolve()


def plant(form: str, trained: Trained, out: Path, marker: Path) -> None:
    """out: a checkpoint folder whose `form` file carries the planted call."""
    if form in ("ckpt.pt", "best.pt"):
        out.mkdir()
        torch.save({"model": Planted(marker)}, out / form)
        return
    if form == "shard value":
        sharded_copy(trained, out, {"planted": Planted(marker)})
        return
    directory = sharded_copy(trained, out)
    if form == "header.pt":
        torch.save({"model_args": Planted(marker)}, directory / "header.pt")
    else:  # .metadata: what DCP reads first, with plain pickle.load
        (directory / ".metadata").write_bytes(pickle.dumps(Planted(marker)))


# torch.load(weights_only=True)'s refusal, said as what it means rather than as damage
FOREIGN = r"it names posix\.mkdir, which a checkpoint never holds \(a file from elsewhere, or a crafted one\); " \
          r"nothing in it was run"


@pytest.mark.parametrize(("form", "message"), [
    ("ckpt.pt", rf"^refusing to load .*ckpt\.pt: {FOREIGN}$"),
    ("best.pt", rf"^refusing to load .*best\.pt: {FOREIGN}$"),
    ("header.pt", rf"^refusing to load .*ckpt-[^/]*: {FOREIGN}$"),
    (".metadata", r"refusing checkpoint .*ckpt-.*: it names posix\.mkdir, which a file of this kind never holds"),
    ("shard value", r"refusing checkpoint .*ckpt-.*: its value model\.planted is not plain data ")])
def test_a_planted_call_in_any_checkpoint_form_is_refused_and_never_run(trained: Trained, tmp_path: Path,
                                                                        one_process_group: None, form: str,
                                                                        message: str):
    marker = tmp_path / "ran"
    out = tmp_path / "out"
    plant(form, trained, out, marker)
    which = "best" if form == "best.pt" else "latest"
    with pytest.raises(UserError, match=message):
        checkpoint.read(str(out), which)
    rc, _, err = run_main(sample, [f"--out_dir={out}", f"--checkpoint={which}", "--num_samples=1",
                                   "--max_new_tokens=2", "--device=cpu"])
    assert rc != 0 and err.count("\n") == 1 and err.startswith("error: ")
    assert not marker.exists()


def test_a_sharded_resume_refuses_planted_metadata(trained: Trained, tmp_path: Path, one_process_group: None):
    marker = tmp_path / "ran"
    directory = sharded_copy(trained, tmp_path / "out")
    (directory / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    model = checkpoint.read(str(trained.out_dir)).build_model()
    with pytest.raises(UserError, match=r"^refusing checkpoint .*: it names posix\.mkdir"):
        checkpoint.load_into(str(directory), {"model": get_model_state_dict(model)})
    assert not marker.exists()


def test_a_sharded_checkpoint_without_metadata_is_one_line(trained: Trained, tmp_path: Path,
                                                           one_process_group: None):
    directory = sharded_copy(trained, tmp_path / "out")
    (directory / ".metadata").unlink()
    with pytest.raises(UserError, match=r"^checkpoint .* is corrupt or truncated \(No such file or directory\)$"):
        checkpoint.read(str(tmp_path / "out"))
    shutil.rmtree(directory)
