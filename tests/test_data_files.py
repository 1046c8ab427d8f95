"""data/files/prepare.py: a folder of your own text files, one file a document. The token streams decode back to
exactly the files' texts; duplicates are read once (exact copies, and with --dedup=near other versions of a file);
val holds whole groups (a top-level folder each, or a file each), the lowest-hashed first, passing over any of more
than half its target, until it holds its share of the bytes (--val_per_mille at most 500) or --val_tokens tokens
(from the groups that fit in half the bytes, else refused); a val document mostly copyable from train is dropped;
the summary and the leak check say what val holds; the output does not depend on the number of workers; and a
refusal or an interrupted run leaves the earlier files untouched.

The oracle (listed, deduplicated, ranked_groups, split_of, contaminated, stream, leak) is the module docstring's rules
written again here, with this file's own blake2b, grouping, byte totals, token counts and n-gram sets: nothing of
prepare.py's but its output."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import datafiles
import tokenizer
from configurator import UserError
from conftest import prepare_module, run_main, run_script, script_env

EOT = 50256
VAL = 400  # per mille: val then holds b.py, c.py, d.py and lib/ of FILES, passing over pkg/ (more than half of it)
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
    "lib/h.py": "from pkg.e import f\n",
    "lib/i.py": "import lib.h\n\nlib.h.f()\n",
}
NOT_UTF8 = {"pkg/latin1.py": "# caf\u00e9 cr\u00e8me\nx = 'na\u00efve'\n".encode("latin-1")}
FOLDERS = ("app", "docs", "lib", "pkg", "tools")
SPREAD = {f"{folder}/{name}.py": f"{folder}_{name} = '{folder} {name}'\n" for folder in FOLDERS
          for name in ("x", "y", "z")} | {"b.py": "top_b = 'b'\n", "e.py": "top_e = 'e'\n"}  # 7 groups by dir
SPREAD_GROUP_SIZES = dict.fromkeys(FOLDERS, 3) | {"b.py": 1, "e.py": 1}  # files in each


def make_folder(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "src", FILES | NOT_UTF8)


# ----------------------------------------------------------------------------------------------------------------
# the oracle: the docstring's rules


def path_hash(group: str) -> int:
    """The docstring's rank of a group: blake2b of its '/'-separated path (UTF-8) with an 8-byte digest, read as a
    little-endian integer."""
    return int.from_bytes(hashlib.blake2b(group.encode("utf-8"), digest_size=8).digest(), "little")


def listed(root: Path, suffix: str = ".py") -> dict[str, bytes]:
    """Every non-empty file whose name ends with suffix, at any depth, by '/'-separated relative path, in path
    order: its bytes."""
    found = [os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
             for folder, _, names in os.walk(root) for name in names if name.endswith(suffix)]
    raw = {rel: (root / rel).read_bytes() for rel in sorted(found)}
    return {rel: data for rel, data in raw.items() if data}


def shingles(data: bytes) -> set[bytes]:
    """A file's byte 8-grams."""
    return {data[i : i + 8] for i in range(len(data) - 7)}


def jaccard(a: bytes, b: bytes) -> float:
    """The exact Jaccard similarity of two files' 8-gram sets (prepare.py estimates it by MinHash)."""
    return len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b))


def deduplicated(files: dict[str, bytes], dedup: str = "exact") -> dict[str, bytes]:
    """In path order: a file with an earlier file's bytes goes (unless dedup is none); with near, so does one at
    Jaccard similarity 0.8 or more to an earlier kept file."""
    kept: dict[str, bytes] = {}
    for rel, data in files.items():
        if dedup != "none" and data in kept.values():
            continue
        if dedup == "near" and any(jaccard(data, other) >= 0.8 for other in kept.values()):
            continue
        kept[rel] = data
    return kept


def text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def ids(data: bytes) -> list[int]:
    """A document's tokens: tiktoken's encoding of its text and the end-of-text after it."""
    return [*tokenizer.gpt2_encoding().encode_ordinary(text(data)), EOT]


def ranked_groups(files: dict[str, bytes], split_by: str = "dir") -> list[list[str]]:
    """The files by group (their top-level folder, a file at the top alone; or each file alone), the groups
    lowest-hashed first, each group's files in path order."""
    groups: dict[str, list[str]] = {}
    for rel in files:
        groups.setdefault(rel.split("/")[0] if split_by == "dir" else rel, []).append(rel)
    return [groups[name] for name in sorted(groups, key=path_hash)]


def split_of(root: Path, per_mille: float = VAL, val_tokens: int = 0, split_by: str = "dir", dedup: str = "exact",
             decontaminate: float = 0.2) -> dict[str, list[str]]:
    """Each split's files in the order written: val's groups in rank order, the last never, one of more than half
    the target (per_mille / 1000 of the deduplicated bytes, or val_tokens tokens) passed over, and by bytes one that
    would take val past half the data, until val holds the target; with val_tokens, only groups that fit, in rank
    order, within half the bytes; where every group is too
    big, the smallest; less the val documents contaminated. Train: every other file, in path order. Raises
    TooFewTokens where val_tokens holds some tokens but fewer than asked."""
    files = deduplicated(listed(root), dedup)
    ranked = ranked_groups(files, split_by)

    def size(group: list[str]) -> int:
        return sum(len(files[rel]) for rel in group)

    def weight(group: list[str]) -> int:
        return sum(len(ids(files[rel])) for rel in group) if val_tokens else size(group)

    candidates = []
    taken = 0
    for group in ranked[:-1]:
        if not val_tokens or taken + size(group) <= sum(len(data) for data in files.values()) / 2:
            candidates.append(group)
            taken += size(group)
    target = val_tokens or per_mille / 1000 * sum(len(data) for data in files.values())
    val: list[str] = []
    held = val_bytes = 0
    half = sum(len(data) for data in files.values()) / 2
    for group in candidates:  # by bytes, a group that would take val past half the data trains too
        if weight(group) <= target / 2 and (val_tokens or val_bytes + size(group) <= half):
            val += group
            held += weight(group)
            val_bytes += size(group)
            if held >= target:
                break
    if val_tokens and 0 < held < val_tokens:
        raise TooFewTokens(held)
    val = val or min(ranked[:-1], key=size)
    split = {"train": [rel for rel in files if rel not in val], "val": val}
    dropped = contaminated(files, split, decontaminate)
    return split | {"val": [rel for rel in val if rel not in dropped]}


class TooFewTokens(Exception):
    """--val_tokens asks for more than the groups within half the bytes hold; the message: how many they hold."""


def contaminated(files: dict[str, bytes], split: dict[str, list[str]], share: float = 0.2, n: int = 32) -> list[str]:
    """Val's documents of which more than `share` of the tokens (those with n before them) occur in train after the
    same n tokens."""
    seen = set(windows([token for rel in split["train"] for token in ids(files[rel])], n))
    dropped = []
    for rel in split["val"]:
        asked = windows(ids(files[rel]), n)
        if share < 1 and asked and sum(window in seen for window in asked) / len(asked) > share:
            dropped.append(rel)
    return dropped


def windows(stream: list[int], n: int) -> list[tuple[int, ...]]:
    """Every run of n + 1 tokens: a token and the n before it."""
    return [tuple(stream[i : i + n + 1]) for i in range(len(stream) - n)]


def texts(root: Path, split: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: [text((root / rel).read_bytes()) for rel in rels] for name, rels in split.items()}


def stream(files: dict[str, bytes], rels: list[str]) -> np.ndarray:
    """A split's tokens: its documents', one after another."""
    return np.array([token for rel in rels for token in ids(files[rel])])


def leak(train: np.ndarray, val: np.ndarray, n: int = 32) -> tuple[float, int]:
    """The share of val's tokens (those with n before them) found in train after the same n tokens, and how many
    such tokens val has."""
    seen = set(windows(train.tolist(), n))
    asked = windows(val.tolist(), n)
    return sum(window in seen for window in asked) / len(asked), len(asked)


# ----------------------------------------------------------------------------------------------------------------
# running the script, reading what it wrote


def bins(out: Path) -> dict[str, np.ndarray]:
    return {split: np.fromfile(out / f"{split}.bin", dtype=np.uint16) for split in ("train", "val")}


def documents(out: Path) -> dict[str, list[str]]:
    """Each split's documents, decoded from its .bin file; checks every document's ids are tiktoken's own
    encoding of its text, each followed by end-of-text."""
    assert datafiles.read_meta(str(out)) | {"source": None} == tokenizer.GPT2_META | {"source": None}
    enc = tokenizer.gpt2_encoding()
    docs = {}
    for split, stream in bins(out).items():
        ends = np.flatnonzero(stream == EOT)
        assert len(stream) > 0 and ends[-1] == len(stream) - 1
        pieces = [stream[a + 1 : b].tolist() for a, b in zip([-1, *ends[:-1]], ends)]
        docs[split] = [enc.decode(piece) for piece in pieces]
        assert pieces == [enc.encode_ordinary(doc) for doc in docs[split]]
    return docs


def prepare(src: Path, out: Path, *flags: str, per_mille: float = VAL) -> str:
    """Run the script in this process (one process unless flags say otherwise); its stdout."""
    code, stdout, stderr = run_main(prepare_module("files"), [f"--input={src}", "--glob=*.py", f"--out_dir={out}",
                                                               f"--val_per_mille={per_mille}", "--num_proc=1", *flags])
    assert code == 0, stderr
    return stdout


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def hex_lines(seed: str, n: int, width: int) -> list[str]:
    """n lines of `width` pseudo-random hex digits: text whose 8-grams no other seed's share."""
    return [f"{i:02d} {hashlib.sha512(f'{seed}-{i}'.encode()).hexdigest()[:width]}\n" for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# documents, and the same bytes however they are made


def test_each_file_is_one_document_ended_by_eot(src: Path, tmp_path: Path):
    stdout = prepare(src, tmp_path / "out")
    split = split_of(src)
    want = texts(src, split)
    assert documents(tmp_path / "out") == want
    # pkg/ ranks second, but holds more than half of val's target: it trains, and val takes the groups after it
    assert split["val"] == ["b.py", "c.py", "d.py", "lib/h.py", "lib/i.py"]
    assert any("\ufffd" in doc for doc in want["train"])  # pkg/latin1.py, decoded with U+FFFD
    files = listed(src)
    lines = stdout.splitlines()
    for name, rels in split.items():
        assert f"{name}: {len(rels)} documents, {sum(len(ids(files[rel])) for rel in rels):,} tokens" in lines
    assert "val: 4 group(s) by --split_by=dir;" in stdout
    assert "dedup: dropped 0 exact copies: 0 files, 0 bytes; 11 files left" in lines
    assert "skipped 1 empty files; 1 files were not UTF-8 (their bad bytes decoded as U+FFFD)" in lines
    assert lines[-1] == f"source: files under {src} matching '*.py'; wrote train.bin, val.bin, meta.json to " \
                        f"{tmp_path / 'out'}"
    assert sorted(os.listdir(tmp_path / "out")) == sorted(OUTPUTS)


@pytest.mark.parametrize("flags", [[], ["--dedup=near", "--val_tokens=60"]])
def test_same_bytes_from_one_process_or_several(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                flags: list[str]):
    prepare(src, tmp_path / "one", *flags)
    monkeypatch.setattr(prepare_module("files"), "CHUNK_BYTES", 1)  # a task per file: several tasks per worker
    monkeypatch.setattr(prepare_module("files"), "IN_FLIGHT", 1)  # and the bound on tasks in flight reached
    prepare(src, tmp_path / "two", *flags, "--num_proc=2")
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")


# ----------------------------------------------------------------------------------------------------------------
# duplicates


def test_exact_copies_are_read_once_the_first_in_path_order(tmp_path: Path):
    shared = "def shared() -> str:\n    return 'vendored into every package'\n"
    src = make_folder(tmp_path / "src", {f"g{i}/own.py": f"own_{i} = {i}\n" for i in range(6)}
                      | {f"g{i}/shared.py": shared for i in range(6)} | {"g2/again.py": shared})
    stdout = prepare(src, tmp_path / "none", "--dedup=none", "--decontaminate=1", per_mille=500)
    docs = documents(tmp_path / "none")
    assert shared in docs["val"] and shared in docs["train"]  # without dedup, the copies fall on both sides
    assert "dedup: none (--dedup=none)" in stdout.splitlines()
    stdout = prepare(src, tmp_path / "out", per_mille=500)
    split = split_of(src, 500)
    assert "g0/shared.py" in split["train"] + split["val"]  # the first copy in path order is the one kept
    docs = documents(tmp_path / "out")
    assert docs == texts(src, split)
    assert (docs["train"] + docs["val"]).count(shared) == 1
    copies = len(shared.encode("utf-8")) * 6
    assert f"dedup: dropped 6 exact copies: 6 files, {copies:,} bytes; 7 files left" in stdout.splitlines()


@pytest.mark.parametrize(("width", "edited_width"), [
    (36, 36),  # ~2 KB
    (79, 19),  # the file just over 4 KB, its other version just under
])
def test_a_near_duplicate_goes_with_dedup_near(tmp_path: Path, width: int, edited_width: int):
    base = hex_lines("base", 50, width)
    edited = [*base[:25], *hex_lines("edit", 1, edited_width), *base[26:]]  # one line of 50 changed
    src = make_folder(tmp_path / "src", {"a/base.py": "".join(base), "b/edited.py": "".join(edited),
                                         "c/other.py": "".join(hex_lines("other", 50, width)),
                                         "d/small.py": "small = 1\n"})
    files = listed(src)
    assert jaccard(files["a/base.py"], files["b/edited.py"]) > 0.9
    assert jaccard(files["a/base.py"], files["c/other.py"]) < 0.01
    stdout = prepare(src, tmp_path / "out", "--dedup=near")
    split = split_of(src, dedup="near")
    assert sorted(split["train"] + split["val"]) == ["a/base.py", "c/other.py", "d/small.py"]
    assert documents(tmp_path / "out") == texts(src, split)
    assert (f"dedup: dropped 0 exact copies, 1 near-duplicates (Jaccard >= 0.8): 1 files, "
            f"{len(files['b/edited.py']):,} bytes; 3 files left") in stdout.splitlines()
    prepare(src, tmp_path / "exact", "--decontaminate=1")  # val is edited.py alone: not decontaminated away
    assert documents(tmp_path / "exact") == texts(src, split_of(src, decontaminate=1))  # kept: not a copy


# ----------------------------------------------------------------------------------------------------------------
# the split


def test_split_by_dir_keeps_each_top_level_folder_on_one_side(tmp_path: Path):
    src = make_folder(tmp_path / "src", SPREAD)
    prepare(src, tmp_path / "dir", per_mille=500)
    by_dir = split_of(src, 500)
    docs = documents(tmp_path / "dir")
    assert docs == texts(src, by_dir)
    side = {doc: name for name, split in docs.items() for doc in split}
    for folder in FOLDERS:
        assert len({side[content] for rel, content in SPREAD.items() if rel.startswith(f"{folder}/")}) == 1
    assert sum(rel.startswith("app/") for rel in by_dir["val"]) == 3  # a folder in val, whole
    prepare(src, tmp_path / "file", "--split_by=file", per_mille=500)
    by_file = split_of(src, 500, split_by="file")
    assert documents(tmp_path / "file") == texts(src, by_file)
    assert any(0 < sum(rel.startswith(f"{folder}/") for rel in by_file["val"]) < 3
               for folder in FOLDERS)  # by file, a folder falls on both sides


@pytest.mark.parametrize(("per_mille", "val_groups"), [
    (0.001, ["b.py"]),  # every group more than half the target: the smallest (b.py and e.py tie: the lower-ranked)
    (500, ["b.py", "app", "e.py", "pkg"]),  # the most: docs/ would take val past half the data; it, lib/ and tools/
    # train
])
def test_val_holds_at_least_one_group_and_never_all(tmp_path: Path, per_mille: float, val_groups: list[str]):
    src = make_folder(tmp_path / "src", SPREAD)
    stdout = prepare(src, tmp_path / "out", per_mille=per_mille)
    split = split_of(src, per_mille)
    assert documents(tmp_path / "out") == texts(src, split)
    assert list(dict.fromkeys(rel.split("/")[0] for rel in split["val"])) == val_groups
    assert f"val: {len(val_groups)} group(s) by --split_by=dir" in stdout


def test_the_last_ranked_group_trains_even_where_it_would_fit(tmp_path: Path):
    ranked = sorted(("g0", "g1", "g2"), key=path_hash)
    lines = dict(zip(ranked, (12, 4, 4)))  # 60%, 20%, 20% of the bytes: the first over half of any target
    contents = {f"{group}/own.py": "".join(hex_lines(group, n, 60)) for group, n in lines.items()}
    src = make_folder(tmp_path / "src", contents)
    prepare(src, tmp_path / "out", per_mille=500)
    split = split_of(src, 500)
    assert documents(tmp_path / "out") == texts(src, split)
    assert split["val"] == [f"{ranked[1]}/own.py"]  # with the last too, val would hold 40%: still short of half
    # by tokens too: the first group is past half the bytes, the last would fit in it, and val holds the middle alone
    before = snapshot(tmp_path / "out")
    middle = len(ids(contents[f"{ranked[1]}/own.py"].encode("utf-8")))
    with pytest.raises(TooFewTokens, match=f"^{middle}$"):
        split_of(src, val_tokens=10**6)
    code, stdout, stderr = run_main(prepare_module("files"), [f"--input={src}", "--glob=*.py", "--val_tokens=1000000",
                                                               f"--out_dir={tmp_path / 'out'}", "--num_proc=1"])
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == (f"error: --val_tokens=1,000,000: val holds only {middle:,} tokens in groups "
                                       "that leave train at least half the data: ask for fewer")
    assert snapshot(tmp_path / "out") == before


@pytest.mark.parametrize(("count", "val_groups"), [
    (lambda tokens: 1, ["b.py"]),  # every group more than half of it: the smallest
    (lambda tokens: 2 * tokens["b.py"], ["b.py", "e.py"]),  # app/ is more than half of it: it trains
    (lambda tokens: 2 * max(tokens.values()), ["b.py", "app", "e.py", "pkg"]),  # pkg/ crosses the count, whole
    # all there may be: docs/ and lib/ are under half the count, but would take val past half the bytes
    (lambda tokens: sum(tokens[group] for group in ("b.py", "app", "e.py", "pkg")), ["b.py", "app", "e.py", "pkg"]),
], ids=["one", "twice-b.py", "twice-a-folder", "half-the-bytes"])
def test_val_tokens_takes_whole_groups_until_the_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      count: Callable[[dict[str, int]], int], val_groups: list[str]):
    src = make_folder(tmp_path / "src", SPREAD)
    files = listed(src)
    tokens = {group[0].split("/")[0]: sum(len(ids(files[rel])) for rel in group) for group in ranked_groups(files)}
    n = count(tokens)
    module = prepare_module("files")
    real = module.encode_files
    weighed: list[str] = []  # the files tokenized for val, before train's

    def counted(root: str, dtype: str, rels: list[str]) -> list:
        if not (tmp_path / "out" / f".train.bin.tmp-{os.getpid()}").exists():
            weighed.extend(rels)
        return real(root, dtype, rels)

    monkeypatch.setattr(module, "CHUNK_BYTES", 1)  # a task per file
    monkeypatch.setattr(module, "encode_files", counted)
    stdout = prepare(src, tmp_path / "out", f"--val_tokens={n}")
    split = split_of(src, val_tokens=n)
    assert documents(tmp_path / "out") == texts(src, split)
    assert split["val"] == [rel for group in val_groups for rel in SPREAD if rel.split("/")[0] == group]
    held = sum(tokens[group] for group in val_groups)
    assert f"val: {len(split['val'])} documents, {held:,} tokens" in stdout.splitlines()
    if len(val_groups) > 1:  # the group that crosses the count completes: without it, too few
        assert held - tokens[val_groups[-1]] < n <= held
    # val weighs the groups up to its last one, and a file past it at most: not every group, nor the rest again
    # (unless every group is more than half the count: then all are weighed before the smallest is chosen)
    ranked = list(tokens)
    through_last = ranked[: ranked.index(val_groups[-1]) + 1]
    if any(tokens[group] <= n / 2 for group in ranked[:-1]):
        assert len(weighed) <= sum(SPREAD_GROUP_SIZES[group] for group in through_last) + 1


@pytest.mark.parametrize(("per_group", "warned"), [(1, True), (8, False)])
def test_the_summary_names_val_largest_document_and_group(tmp_path: Path, per_group: int, warned: bool):
    contents = {f"g{g}/doc{j}.py": "".join(hex_lines(f"g{g} doc{j}", 3, 40 + 2 * j + g)) for g in range(5)
                for j in range(per_group)}
    src = make_folder(tmp_path / "src", contents)
    stdout = prepare(src, tmp_path / "out", per_mille=500)
    split = split_of(src, 500)
    assert documents(tmp_path / "out") == texts(src, split)
    tokens = {rel: len(ids(contents[rel].encode("utf-8"))) for rel in split["val"]}
    by_group: dict[str, int] = {}
    for rel, n in tokens.items():
        by_group[rel.split("/")[0]] = by_group.get(rel.split("/")[0], 0) + n
    assert len(by_group) == 2  # of 5, each about a fifth of the bytes: a third would take val past half the data
    total = sum(tokens.values())
    largest = max(tokens, key=tokens.get)
    group = max(by_group, key=by_group.get)
    assert list(tokens.values()).count(tokens[largest]) == 1  # no tie for the largest
    assert (f"val: 2 group(s) by --split_by=dir; its largest document {largest} holds {tokens[largest] / total:.1%} "
            f"of its tokens, its largest group {group} {by_group[group] / total:.1%}") in stdout.splitlines()
    assert (tokens[largest] / total > 0.1) == warned
    assert ("warning: one document holds over a tenth of val: its loss swings with that file; hold out more "
            "(--val_tokens, --val_per_mille)" in stdout.splitlines()) == warned


TRAINED = "".join(hex_lines("trained", 20, 60))


@pytest.mark.parametrize(("held_out", "flags"), [
    ("distinct", []),
    ("distinct", ["--leak_ngram=8"]),
    ("copy", ["--decontaminate=1"]),
    ("copy", []),  # the copy is dropped from val: decontaminated
    ("copy", ["--decontaminate=1", "--leak_ngram=0"]),  # no leak check
])
def test_the_leak_check_measures_val_text_found_in_train(tmp_path: Path, held_out: str, flags: list[str]):
    ranked = sorted(("g0", "g1", "g2"), key=path_hash)  # val: the first two at --val_per_mille=500
    src = make_folder(tmp_path / "src", {
        f"{ranked[0]}/held_out.py": TRAINED if held_out == "copy" else "".join(hex_lines("held out", 20, 60)),
        f"{ranked[1]}/small.py": "".join(hex_lines("small", 3, 60)),
        f"{ranked[2]}/trained.py": TRAINED,
        # most of the bytes in the last group: held_out.py is under half val's target
        f"{ranked[2]}/more.py": "".join(hex_lines("more", 60, 60)),
    })
    stdout = prepare(src, tmp_path / "out", "--dedup=none", *flags, per_mille=500)
    decontaminate = 1 if "--decontaminate=1" in flags else 0.2
    split = split_of(src, 500, dedup="none", decontaminate=decontaminate)
    assert documents(tmp_path / "out") == texts(src, split)
    dropped = held_out == "copy" and decontaminate < 1
    assert split["val"][-1] == f"{ranked[1]}/small.py"
    assert len(split["val"]) == (1 if dropped else 2)
    lines = stdout.splitlines()
    n = 0 if "--leak_ngram=0" in flags else 8 if "--leak_ngram=8" in flags else 32
    if decontaminate < 1:
        copied = len(ids(TRAINED.encode("utf-8"))) if dropped else 0
        files = listed(src)
        whole = split_of(src, 500, dedup="none", decontaminate=1)  # val before decontamination
        before, _ = leak(stream(files, whole["train"]), stream(files, whole["val"]), n or 32)
        assert (before > 0.5, before < 0.01) == (held_out == "copy", held_out != "copy")
        assert (f"val: dropped {int(dropped)} documents ({copied:,} tokens) of which more than 20% could be copied "
                f"from train (--decontaminate); before that {before:.1%} of val's tokens could be") in lines
    else:
        assert not any(line.startswith("val: dropped") for line in lines)
    leaks = [line for line in lines if line.startswith("leak check: ")]
    if not n:
        assert leaks == []
        return
    share, asked = leak(*bins(tmp_path / "out").values(), n)
    high = held_out == "copy" and not dropped
    assert (share > 0.8, share < 0.01) == (high, not high)
    assert leaks == [f"leak check: {share:.1%} of val's tokens occur in train with the {n} tokens before them "
                     f"(measured on {asked:,} of {asked:,} val tokens): the share a model could recall rather than "
                     "predict"]


# ----------------------------------------------------------------------------------------------------------------
# refusals and failures


@pytest.mark.parametrize(("flags", "match"), [
    (["--input="], r"^--input=DIR is required"),
    (["--input={tmp}/nope"], r"^--input: no such folder .*nope$"),
    (["--glob=*.rs"], r"^no file under .*src matches --glob='\*\.rs'$"),
    (["--glob=empty.py"], r"matches --glob='empty\.py' \(1 empty ones skipped\)$"),
    (["--glob=../*.txt"], r"^--glob='\.\./\*\.txt' reaches outside --input: name files inside it$"),
    (["--glob=a.py"], r"^the 1 file\(s\) to prepare fall in 1 group at --split_by=dir, and at least 2 are needed "),
    (["--glob=pkg/sub/*.py"], r"^the 2 file\(s\) to prepare fall in 1 group at --split_by=dir, .* or use "
                              r"--split_by=file$"),
    (["--dedup=fuzzy"], r"^--dedup must be one of exact, near, none, got 'fuzzy'$"),
    (["--split_by=repo"], r"^--split_by must be one of dir, file, got 'repo'$"),
    (["--val_per_mille=501"], r"^--val_per_mille must be in \(0, 500\] \(train keeps at least half\) and "
                              r"--near_threshold in \(0, 1\], got 501 and 0\.8$"),
    (["--val_per_mille=999"], r"^--val_per_mille must be in \(0, 500\] .*, got 999 and 0\.8$"),
    (["--val_per_mille=0"], r"^--val_per_mille must be in \(0, 500\] .*, got 0 and 0\.8$"),
    (["--near_threshold=0"], r"^--val_per_mille must be .*, got 400 and 0$"),
    (["--decontaminate=0"], r"^--decontaminate must be in \(0, 1\] \(1: keep every val document\), got 0$"),
    (["--num_proc=0"], r"^--num_proc must be at least 1, --val_tokens and --leak_ngram at least 0$"),
    (["--val_tokens=-1"], r"^--num_proc must be at least 1, --val_tokens and --leak_ngram at least 0$"),
    (["--out_dir={tmp}/a_file/out"], r"^cannot write to .*a_file/out: Not a directory; the files there are left"),
    (["--globb=*.py"], r"did you mean 'glob'"),
])
def test_refusals_replace_nothing(src: Path, tmp_path: Path, flags: list[str], match: str):
    prepare(src, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    (tmp_path / "a_file").write_text("a file, not a folder\n", encoding="utf-8")
    make_folder(src, {"z.py": "other data\n"})
    base = [f"--input={src}", "--glob=*.py", f"--out_dir={tmp_path / 'out'}", f"--val_per_mille={VAL}", "--num_proc=1"]
    with pytest.raises(UserError, match=match):
        prepare_module("files").main([*base, *(flag.format(tmp=tmp_path) for flag in flags)])
    assert snapshot(tmp_path / "out") == before


def test_a_refusal_is_one_line_and_exit_status_2(tmp_path: Path):
    code, stdout, stderr = run_main(prepare_module("files"), [f"--input={tmp_path / 'nope'}"])
    assert (code, stdout, stderr) == (2, "", f"error: --input: no such folder {tmp_path / 'nope'}\n")


def test_an_unreadable_subfolder_is_refused_in_one_line(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    prepare(src, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    locked = make_folder(src / "pkg" / "locked", {"secret.py": "hidden = 1\n"})
    if os.geteuid() == 0:  # root reads any folder: its listing fails here as a permission would fail it
        real = os.scandir

        def scandir(path: str | os.PathLike = ".") -> Iterator[os.DirEntry]:
            if os.fspath(path) == str(locked):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        code, stdout, stderr = run_main(prepare_module("files"), [f"--input={src}", "--glob=*.py", "--num_proc=1",
                                                                   f"--out_dir={tmp_path / 'out'}"])
    finally:
        locked.chmod(0o755)
    assert (code, stdout) == (2, "")
    assert stderr == (f"error: cannot read {locked}: Permission denied (1 folder(s) under {src} cannot be read): "
                      "give access or choose another --input\n")
    assert snapshot(tmp_path / "out") == before


@pytest.mark.parametrize("count", [
    lambda tokens: sum(tokens[group] for group in ("b.py", "app", "e.py", "pkg")) + 1,  # one more than there may be
    lambda tokens: 10**6,
], ids=["one-more", "million"])
def test_val_tokens_beyond_half_the_bytes_is_refused(tmp_path: Path, count: Callable[[dict[str, int]], int]):
    src = make_folder(tmp_path / "src", SPREAD)
    prepare(src, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    files = listed(src)
    tokens = {group[0].split("/")[0]: sum(len(ids(files[rel])) for rel in group) for group in ranked_groups(files)}
    n = count(tokens)
    held = sum(tokens[group] for group in ("b.py", "app", "e.py", "pkg"))  # docs/ or lib/: past half the bytes
    with pytest.raises(TooFewTokens, match=f"^{held}$"):
        split_of(src, val_tokens=n)
    code, stdout, stderr = run_main(prepare_module("files"), [f"--input={src}", "--glob=*.py", f"--val_tokens={n}",
                                                               f"--out_dir={tmp_path / 'out'}", "--num_proc=1"])
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == (f"error: --val_tokens={n:,}: val holds only {held:,} tokens in groups "
                                       "that leave train at least half the data: ask for fewer")
    assert snapshot(tmp_path / "out") == before


def test_a_val_of_copies_of_train_is_refused(tmp_path: Path):
    src = make_folder(tmp_path / "src", {"g0/copy.py": TRAINED, "g1/trained.py": TRAINED})  # val: the one not last
    prepare(src, tmp_path / "out", "--dedup=none", "--decontaminate=1")
    before = snapshot(tmp_path / "out")
    code, stdout, stderr = run_main(prepare_module("files"), [f"--input={src}", "--glob=*.py", "--dedup=none",
                                                               f"--out_dir={tmp_path / 'out'}", "--num_proc=1"])
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == ("error: the val split came out empty: all 1 of its documents could be copied "
                                       "from train (--decontaminate): hold out more (--val_tokens, --val_per_mille), "
                                       "or keep them with --decontaminate=1")
    assert snapshot(tmp_path / "out") == before


def test_a_val_file_emptied_after_listing_is_refused_and_a_new_run_chooses_again(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch):
    src = make_folder(tmp_path / "src", {f"m{i:03d}.py": f"m_{i} = {i}\n" for i in range(20)})
    [held_out] = split_of(src, 5)["val"]
    module = prepare_module("files")
    real = module.list_files

    def emptied_after_listing(root: str, pattern: str) -> tuple[list[tuple[str, int]], int]:
        found = real(root, pattern)
        (src / held_out).write_bytes(b"")
        return found

    monkeypatch.setattr(module, "list_files", emptied_after_listing)
    code, _, stderr = run_main(module, [f"--input={src}", "--glob=*.py", f"--out_dir={tmp_path / 'out'}",
                                        "--num_proc=1"])
    # the last line: the progress bar came before it, on stderr too
    assert (code, stderr.splitlines()[-1]) == (2, "error: the val split came out empty: its files were emptied after "
                                                  "they were listed; run again")
    assert os.listdir(tmp_path / "out") == []  # no temporary left, nothing renamed into place
    monkeypatch.setattr(module, "list_files", real)
    stdout = prepare(src, tmp_path / "out", per_mille=5)
    assert documents(tmp_path / "out") == texts(src, split_of(src, 5))  # chosen again among the files left
    assert "skipped 1 empty files" in stdout


@pytest.mark.parametrize(("failure", "status", "message"), [
    ("interrupt", 130, "interrupted\n"),  # Ctrl-C halfway through train's files
    ("disk_full", 2, "No space left on device; the files there are left as they were\n"),  # at meta.json, the last
])
def test_an_interrupted_run_leaves_the_old_files(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  failure: str, status: int, message: str):
    out = tmp_path / "out"
    prepare(src, out)
    before = snapshot(out)
    make_folder(src, {"z.py": "other data\n"})
    module = prepare_module("files")
    real = module.encode_files
    calls = []

    def interrupted(root: str, dtype: str, rels: list[str]) -> list:
        calls.append((out / f".train.bin.tmp-{os.getpid()}").exists())
        if calls.count(True) == 3:  # the third of train's files, its temporary on disk
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
    val = len(split_of(src)["val"]) if failure == "interrupt" else 0
    assert calls == [False] * val + [True] * (3 if val else 0)  # every val file, then 3 of train's
    assert snapshot(out) == before  # and no .tmp file is left


@pytest.mark.slow
def test_runs_as_a_script_with_worker_processes(src: Path, tmp_path: Path):
    prepare(src, tmp_path / "in_process")
    code, stdout, stderr = run_script("data/files/prepare.py", [f"--input={src}", "--glob=*.py", "--num_proc=2",
                                                               f"--out_dir={tmp_path / 'script'}",
                                                               f"--val_per_mille={VAL}"], env=script_env(), timeout=60)
    assert code == 0, stderr
    split = split_of(src)
    assert f"train: {len(split['train'])} documents" in stdout and f"val: {len(split['val'])} documents" in stdout
    assert snapshot(tmp_path / "script") == snapshot(tmp_path / "in_process")
