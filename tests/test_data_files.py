"""data/files/prepare.py: a folder of your own text files, one file a document. The token streams decode back to
exactly the files' texts, the split follows each path's hash (and stays put when files are added), the output does
not depend on the number of workers, and a refusal or an interrupted run leaves the earlier files untouched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import tokenizer
from configurator import UserError
from conftest import prepare_module, run_main, run_script, script_env

EOT = 50256
VAL = 400  # per mille: this folder's 9 documents then split 4 train / 5 val
OUTPUTS = ("train.bin", "val.bin", "meta.json")
FILES = {
    "a.py": "print('hello')\n",
    "b.py": "import os\n\n\ndef main() -> None:\n    print(os.getcwd())\n",
    "c.py": "x = 1\ny = 2\n",
    "d.py": "# a literal <|endoftext|> stays text\n",
    "notes.txt": "not a .py file: left out\n",
    "empty.py": "",
    "pkg/__init__.py": "\n",
    "pkg/e.py": "def f():\n    return 'héllo wörld ✓ 🙂'\n",
    "pkg/sub/f.py": "class F:\n    pass\n" * 3,
    "pkg/sub/g.py": "    leading spaces\n\n\n\ttabs and blank lines   ",
}
NOT_UTF8 = {"pkg/latin1.py": "# caf\u00e9 cr\u00e8me\nx = 'na\u00efve'\n".encode("latin-1")}


def make_folder(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "src", FILES | NOT_UTF8)


def expected(root: Path, val_per_mille: float = VAL) -> dict[str, list[str]]:
    """From the docstring's rules alone: every non-empty *.py file at any depth, in order of its '/'-separated
    relative path, decoded with U+FFFD for bad bytes; in val when blake2b's first 8 bytes of that path, read
    little-endian, fall below val_per_mille / 1000 of 2**64."""
    docs: dict[str, list[str]] = {"train": [], "val": []}
    found = [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
             for d, _, names in os.walk(root) for n in names if n.endswith(".py")]
    for rel in sorted(found):
        data = (root / rel).read_bytes()
        digest = hashlib.blake2b(rel.encode("utf-8"), digest_size=8).digest()
        if data:
            split = "val" if int.from_bytes(digest, "little") < val_per_mille / 1000 * 2**64 else "train"
            docs[split].append(data.decode("utf-8", errors="replace"))
    return docs


def documents(out: Path) -> dict[str, list[str]]:
    """Each split's documents, decoded from its .bin file; checks every document's ids are tiktoken's own
    encoding of its text, each followed by end-of-text."""
    assert tokenizer.read_meta(str(out)) | {"source": None} == tokenizer.GPT2_META | {"source": None}
    enc = tokenizer.gpt2_encoding()
    docs = {}
    for split in ("train", "val"):
        ids = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
        ends = np.flatnonzero(ids == EOT)
        assert len(ids) > 0 and ends[-1] == len(ids) - 1
        pieces = [ids[a + 1 : b].tolist() for a, b in zip([-1, *ends[:-1]], ends)]
        docs[split] = [enc.decode(piece) for piece in pieces]
        assert pieces == [enc.encode_ordinary(text) for text in docs[split]]
    return docs


def prepare(src: Path, out: Path, *flags: str) -> str:
    """Run the script in this process; its stdout."""
    code, stdout, stderr = run_main(prepare_module("files"), [f"--input={src}", "--glob=*.py", f"--out_dir={out}",
                                                               f"--val_per_mille={VAL}", *flags])
    assert code == 0, stderr
    return stdout


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_each_file_is_one_document_ended_by_eot(src: Path, tmp_path: Path):
    stdout = prepare(src, tmp_path / "out", "--num_proc=1")
    want = expected(src)
    assert documents(tmp_path / "out") == want
    assert [len(want["train"]), len(want["val"])] == [4, 5]  # both splits exercised
    assert any("\ufffd" in doc for doc in want["train"] + want["val"])  # the latin-1 file, decoded with U+FFFD
    enc = tokenizer.gpt2_encoding()
    for split in ("train", "val"):
        tokens = sum(len(enc.encode_ordinary(doc)) + 1 for doc in want[split])
        assert f"{split}: {len(want[split])} documents, {tokens} tokens" in stdout
    assert "skipped 1 empty files; 1 files were not UTF-8" in stdout
    assert f"to {tmp_path / 'out'}" in stdout
    assert sorted(os.listdir(tmp_path / "out")) == sorted(OUTPUTS)


def test_same_bytes_from_one_process_or_several(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    prepare(src, tmp_path / "one", "--num_proc=1")
    monkeypatch.setattr(prepare_module("files"), "CHUNK_BYTES", 1)  # a task per file: several tasks per worker
    monkeypatch.setattr(prepare_module("files"), "IN_FLIGHT", 1)  # and the bound on tasks in flight reached
    prepare(src, tmp_path / "two", "--num_proc=2")
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")


def test_adding_files_moves_no_other_file_between_splits(src: Path, tmp_path: Path):
    prepare(src, tmp_path / "out", "--num_proc=1")
    before = documents(tmp_path / "out")
    make_folder(src, {f"new/n{i}.py": f"new_{i} = {i}\n" for i in range(12)})
    prepare(src, tmp_path / "out", "--num_proc=1")
    after = documents(tmp_path / "out")
    assert after == expected(src)
    for split in ("train", "val"):
        assert [doc for doc in after[split] if not doc.startswith("new_")] == before[split]
    assert all(len([doc for doc in after[split] if doc.startswith("new_")]) > 0 for split in ("train", "val"))


@pytest.mark.parametrize(("flags", "match"), [
    (["--input="], r"^--input=DIR is required"),
    (["--input={tmp}/nope"], r"^--input: no such folder .*nope$"),
    (["--glob=*.rs"], r"^no file under .*src matches --glob='\*\.rs'$"),
    (["--glob=empty.py"], r"matches --glob='empty\.py' \(1 empty ones skipped\)$"),
    (["--val_per_mille=0"], r"^the val split would be empty: 0 of 10 files fall in val at --val_per_mille=0;"),
    (["--val_per_mille=1000"], r"^the train split would be empty: 10 of 10 files"),
    (["--num_proc=0"], r"^--num_proc must be 1 or more, got 0$"),
    (["--out_dir={tmp}/a_file/out"], r"^cannot write to .*a_file/out: Not a directory; the files there are left"),
    (["--globb=*.py"], r"did you mean 'glob'"),
])
def test_refusals_replace_nothing(src: Path, tmp_path: Path, flags: list[str], match: str):
    prepare(src, tmp_path / "out", "--num_proc=1")
    before = snapshot(tmp_path / "out")
    (tmp_path / "a_file").write_text("a file, not a folder\n", encoding="utf-8")
    make_folder(src, {"z.py": "other data\n"})
    base = [f"--input={src}", "--glob=*.py", f"--out_dir={tmp_path / 'out'}", f"--val_per_mille={VAL}"]
    with pytest.raises(UserError, match=match):
        prepare_module("files").main([*base, *(flag.format(tmp=tmp_path) for flag in flags)])
    assert snapshot(tmp_path / "out") == before


def test_a_refusal_is_one_line_and_exit_status_2(tmp_path: Path):
    code, stdout, stderr = run_main(prepare_module("files"), [f"--input={tmp_path / 'nope'}"])
    assert (code, stdout, stderr) == (2, "", f"error: --input: no such folder {tmp_path / 'nope'}\n")


@pytest.mark.parametrize(("failure", "status", "message"), [
    ("interrupt", 130, "interrupted\n"),  # Ctrl-C halfway through the files
    ("disk_full", 2, "No space left on device; the files there are left as they were\n"),  # at meta.json, the last
])
def test_an_interrupted_run_leaves_the_old_files(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  failure: str, status: int, message: str):
    out = tmp_path / "out"
    prepare(src, out, "--num_proc=1")
    before = snapshot(out)
    make_folder(src, {"z.py": "other data\n"})
    module = prepare_module("files")
    real = module.encode_files
    calls = []

    def interrupted(root: str, dtype: str, rels: list[str]) -> list:
        staged = [out / f".{name}.tmp-{os.getpid()}" for name in ("train.bin", "val.bin")]
        calls.append(all(path.exists() for path in staged))
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(root, dtype, rels)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "CHUNK_BYTES", 1)  # a task per file
    if failure == "interrupt":
        monkeypatch.setattr(module, "encode_files", interrupted)
    else:
        monkeypatch.setattr(tokenizer.json, "dump", disk_full)
    code, _, stderr = run_main(module, [f"--input={src}", "--glob=*.py", f"--out_dir={out}", f"--val_per_mille={VAL}",
                                        "--num_proc=1"])
    assert code == status and stderr.endswith(message), stderr
    assert calls == ([True] * 5 if failure == "interrupt" else [])  # halfway: 4 files tokenized, temporaries open
    assert snapshot(out) == before  # and no .tmp file is left


@pytest.mark.slow
def test_runs_as_a_script_with_worker_processes(src: Path, tmp_path: Path):
    prepare(src, tmp_path / "in_process", "--num_proc=1")
    code, stdout, stderr = run_script("data/files/prepare.py", [f"--input={src}", "--glob=*.py", "--num_proc=2",
                                                               f"--out_dir={tmp_path / 'script'}",
                                                               f"--val_per_mille={VAL}"], env=script_env(), timeout=60)
    assert code == 0, stderr
    assert "train: 4 documents" in stdout and "val: 5 documents" in stdout
    assert snapshot(tmp_path / "script") == snapshot(tmp_path / "in_process")
