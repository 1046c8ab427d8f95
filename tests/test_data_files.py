"""data/files/prepare.py: a folder of your own text files, one file a document. The token streams decode back to
exactly the files' texts, the split follows each path's hash (and stays put when files are added; a small folder
holds out its lowest-hashed file), the output does not depend on the number of workers, and a refusal or an
interrupted run leaves the earlier files untouched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import datafiles
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


def path_hash(rel: str) -> int:
    """The docstring's hash of a '/'-separated relative path: blake2b's first 8 bytes, read little-endian."""
    return int.from_bytes(hashlib.blake2b(rel.encode("utf-8"), digest_size=8).digest(), "little")


def expected(root: Path, val_per_mille: float = VAL) -> dict[str, list[str]]:
    """From the docstring's rules alone: every non-empty *.py file at any depth, in order of its '/'-separated
    relative path, decoded with U+FFFD for bad bytes; in val when its hash falls below val_per_mille / 1000 of
    2**64, or, when no file does, the file with the lowest hash."""
    found = [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
             for d, _, names in os.walk(root) for n in names if n.endswith(".py")]
    raw = {rel: (root / rel).read_bytes() for rel in sorted(found)}
    texts = {rel: data.decode("utf-8", errors="replace") for rel, data in raw.items() if data}
    val = {rel for rel in texts if path_hash(rel) < val_per_mille / 1000 * 2**64} or {min(texts, key=path_hash)}
    return {"train": [text for rel, text in texts.items() if rel not in val],
            "val": [text for rel, text in texts.items() if rel in val]}


def documents(out: Path) -> dict[str, list[str]]:
    """Each split's documents, decoded from its .bin file; checks every document's ids are tiktoken's own
    encoding of its text, each followed by end-of-text."""
    assert datafiles.read_meta(str(out)) | {"source": None} == tokenizer.GPT2_META | {"source": None}
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
    (["--glob=a.py"], r"^only 1 file to prepare, and at least 2 are needed \(one for train, one for val\)"),
    (["--val_per_mille=1000"], r"^the train split would be empty: 10 of 10 files fall in val at --val_per_mille=1000; "
                               r"choose a lower --val_per_mille$"),
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


def numbered(root: Path, n: int) -> Path:
    """A folder of `n` one-line files, m000.py onwards."""
    return make_folder(root, {f"m{i:03d}.py": f"m_{i} = {i}\n" for i in range(n)})


def at_defaults(src: Path, out: Path, *flags: str) -> tuple[int, str, str]:
    """Run the script with the default --val_per_mille."""
    return run_main(prepare_module("files"), [f"--input={src}", "--glob=*.py", f"--out_dir={out}", *flags])


@pytest.mark.parametrize("n", [20, 68])
def test_a_small_folder_holds_out_its_lowest_hashed_file(tmp_path: Path, n: int):
    src = numbered(tmp_path / "src", n)
    rels = sorted(p.name for p in src.iterdir())
    assert not any(path_hash(rel) < 5 / 1000 * 2**64 for rel in rels)  # the threshold alone would leave val empty
    code, stdout, stderr = at_defaults(src, tmp_path / "out", "--num_proc=1")
    assert code == 0, stderr
    lowest = min(rels, key=path_hash)
    docs = documents(tmp_path / "out")
    assert docs["val"] == [(src / lowest).read_text(encoding="utf-8")]
    assert docs == expected(src, 5)
    assert stdout.splitlines()[0] == (f"val: 1 of {n} files (none falls in val at --val_per_mille=5; "
                                      "the lowest-hashed file is held out)")
    assert "val: 1 documents" in stdout and f"train: {n - 1} documents" in stdout


def test_a_large_enough_folder_keeps_the_threshold_split(tmp_path: Path):
    src = numbered(tmp_path / "src", 400)
    rels = sorted(p.name for p in src.iterdir())
    val = [rel for rel in rels if path_hash(rel) < 5 / 1000 * 2**64]
    assert len(val) > 1  # the threshold alone fills val, with more than the lowest-hashed file
    code, stdout, stderr = at_defaults(src, tmp_path / "out", "--num_proc=1")
    assert code == 0, stderr
    assert documents(tmp_path / "out")["val"] == [(src / rel).read_text(encoding="utf-8") for rel in val]
    assert "held out" not in stdout and f"val: {len(val)} documents" in stdout


def test_a_folder_of_one_file_is_refused_in_one_line(tmp_path: Path):
    src = numbered(tmp_path / "src", 1)
    code, stdout, stderr = at_defaults(src, tmp_path / "out")
    assert (code, stdout) == (2, "")
    assert stderr == ("error: only 1 file to prepare, and at least 2 are needed (one for train, one for val): "
                      "add files to --input or widen --glob\n")
    assert not (tmp_path / "out").exists()


def test_a_val_file_emptied_after_listing_is_refused_and_a_new_run_chooses_again(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch):
    src = numbered(tmp_path / "src", 20)
    lowest = min((p.name for p in src.iterdir()), key=path_hash)
    module = prepare_module("files")
    real = module.list_files

    def emptied_after_listing(root: str, pattern: str) -> tuple[list[tuple[str, int]], int]:
        listed = real(root, pattern)
        (src / lowest).write_bytes(b"")
        return listed

    monkeypatch.setattr(module, "list_files", emptied_after_listing)
    code, _, stderr = at_defaults(src, tmp_path / "out", "--num_proc=1")
    # the last line: the progress bar came before it, on stderr too
    assert (code, stderr.splitlines()[-1]) == (2, "error: the val split came out empty: its files were emptied after "
                                                  "they were listed; run again")
    assert os.listdir(tmp_path / "out") == []  # no temporary left, nothing renamed into place
    monkeypatch.setattr(module, "list_files", real)
    code, stdout, stderr = at_defaults(src, tmp_path / "out", "--num_proc=1")
    assert code == 0, stderr
    assert documents(tmp_path / "out") == expected(src, 5)  # the next-lowest hash among the files left
    assert "skipped 1 empty files" in stdout


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
        monkeypatch.setattr(datafiles.json, "dump", disk_full)
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
