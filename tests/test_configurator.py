"""configurator.py: flags and config files into a typed dataclass, with coercion and helpful refusals."""

from __future__ import annotations

import dataclasses
import importlib
import re
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import bench
import checkpoint
import configurator
import export
import sample
import source
import train
from conftest import REPO_ROOT, run_main
from configurator import UserError


@dataclass
class Settings:
    """Settings for the tests."""

    learning_rate: float = 6e-4
    max_iters: int = 100
    compile: bool = True
    top_k: int | None = 200
    out_dir: str = "out"
    batch_size: int = 12


def load(*argv: str) -> Settings:
    return configurator.load(Settings, list(argv))


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_without_arguments():
    assert load() == Settings()


def test_int_flag_for_float_field_is_float():
    value = load("--learning_rate=1").learning_rate
    assert value == 1.0
    assert type(value) is float


@pytest.mark.parametrize("text", ["5e3", "5000", "5000.0"])
def test_int_field_accepts_integral_numbers(text: str):
    value = load(f"--max_iters={text}").max_iters
    assert value == 5000
    assert type(value) is int


def test_int_field_refuses_fraction():
    with pytest.raises(UserError, match="max_iters"):
        load("--max_iters=2.5")


@pytest.mark.parametrize(("text", "expected"), [("True", True), ("False", False), ("true", True), ("false", False)])
def test_bool_flags(text: str, expected: bool):
    assert load(f"--compile={text}").compile is expected


def test_bool_flag_refuses_other_words():
    with pytest.raises(UserError, match="compile"):
        load("--compile=yes")


@pytest.mark.parametrize(("text", "expected"), [("None", None), ("5", 5)])
def test_optional_field(text: str, expected: int | None):
    assert load(f"--top_k={text}").top_k == expected


def test_none_for_a_required_field_is_refused():
    with pytest.raises(UserError, match="batch_size"):
        load("--batch_size=None")


@pytest.mark.parametrize(("flag", "expected"), [
    ("--out_dir=out-test", "out-test"),
    ("--out_dir='quoted dir'", "quoted dir"),
    ('--out_dir="double"', "double"),
    ("--out_dir=a=b", "a=b"),
])
def test_strings(flag: str, expected: str):
    assert load(flag).out_dir == expected


def test_later_arguments_win(tmp_path: Path):
    cfg = write(tmp_path / "c.py", "batch_size = 7\nmax_iters = 3\n")
    assert (load(cfg, "--batch_size=9").batch_size, load(cfg, "--batch_size=9").max_iters) == (9, 3)
    assert load("--batch_size=9", cfg).batch_size == 7


def test_config_file_values_are_coerced(tmp_path: Path):
    cfg = write(tmp_path / "c.py", "learning_rate = 1\nmax_iters = 5e3\ntop_k = None\n")
    settings = load(cfg)
    assert (settings.learning_rate, settings.max_iters, settings.top_k) == (1.0, 5000, None)
    assert (type(settings.learning_rate), type(settings.max_iters)) == (float, int)


def test_unknown_flag_names_the_nearest_setting():
    with pytest.raises(UserError, match=r"unknown setting 'lerning_rate'.*did you mean 'learning_rate'"):
        load("--lerning_rate=1e-3")


def test_unknown_setting_with_nothing_close_gets_no_guess():
    with pytest.raises(UserError, match=r"^unknown setting 'fp8' in flags$"):  # not "did you mean 'stop'?"
        load("--fp8=True")


def test_unknown_key_in_config_file_names_file_and_nearest_setting(tmp_path: Path):
    cfg = write(tmp_path / "c.py", "max_iter = 10\n")
    with pytest.raises(UserError, match=r"unknown setting 'max_iter' in .*c\.py.*did you mean 'max_iters'"):
        load(cfg)


def test_wrong_type_names_setting_and_value():
    with pytest.raises(UserError, match=r"'batch_size' expects int, got 'abc'"):
        load("--batch_size=abc")


def test_wrong_type_in_config_file(tmp_path: Path):
    cfg = write(tmp_path / "c.py", "batch_size = 'twelve'\n")
    with pytest.raises(UserError, match="batch_size"):
        load(cfg)


def test_missing_config_file():
    with pytest.raises(UserError, match=r"config file not found: nowhere/missing\.py"):
        load("nowhere/missing.py")


def test_flag_without_value():
    with pytest.raises(UserError, match="needs a value"):
        load("--compile")


def test_help_lists_every_setting_with_its_default(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit, match="0") as exit_info:
        configurator.load(train.TrainConfig, ["--batch_size=3", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(train.TrainConfig):
        assert f"--{field.name}={field.default!r}" in out, field.name


def test_imports_and_functions_in_config_file_are_ignored(tmp_path: Path):
    cfg = write(tmp_path / "c.py", (
        "import math\nimport os.path\n\n"
        "def double(x):\n    return 2 * x\n\n"
        "class Helper:\n    pass\n\n"
        "_private = 3\n"
        "max_iters = double(int(math.sqrt(16)))\n"
        "out_dir = os.path.join('a', 'b')\n"
    ))
    settings = load(cfg)
    assert (settings.max_iters, settings.out_dir) == (8, "a/b")


def test_names_imported_from_a_module_in_config_file_are_ignored(tmp_path: Path):
    # `from math import sqrt` is as much an import as `import math`: a builtin function is no setting
    cfg = write(tmp_path / "c.py", "from math import sqrt\nmax_iters = int(sqrt(16))\n")
    assert load(cfg).max_iters == 4


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "config").glob("*.py")), ids=lambda p: p.name)
def test_every_shipped_config_dry_runs(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # no data under data_root (GPT-2's vocabulary stands in) and no download: the model is built on the meta device,
    # accounted, and then the run is refused as the real one would be, for its missing data
    with pytest.raises(UserError, match=r"meta\.json not found: prepare the data first"):
        train.main([str(path), "--dry_run=True", "--device=cpu", f"--data_root={tmp_path}"])
    out = capsys.readouterr().out
    assert "dry run: nothing trained" in out and "total" in out
    settings = runpy.run_path(str(path))  # the file's own numbers, over TrainConfig's documented defaults
    B = settings.get("batch_size", 12)
    T = settings.get("block_size", 1024)
    accum = settings.get("gradient_accumulation_steps", 40)
    assert f"tokens per iteration: {B * T * accum:,} = batch_size {B} x block_size {T} x " in out


def test_sample_config_defaults_and_optional_top_k():
    assert configurator.load(sample.SampleConfig, ["--top_k=50"]).top_k == 50
    assert configurator.load(sample.SampleConfig, ["--top_k=50", "--top_k=None"]).top_k is None
    assert configurator.load(sample.SampleConfig, []).top_k is None  # a default of 200 would exceed a char vocabulary


@pytest.mark.parametrize(("text", "expected"), [
    ("batch_size = 8\nx = 1 / 0\n", r"c\.py, line 2: ZeroDivisionError: division by zero"),
    ("batch_size = (\n", r"c\.py, line 1: SyntaxError: '\(' was never closed"),
    ("import no_such_module\n", r"c\.py, line 1: ModuleNotFoundError: No module named 'no_such_module'")])
def test_a_config_file_that_raises_is_one_line_naming_file_and_line(tmp_path: Path, text: str, expected: str):
    with pytest.raises(UserError, match=expected):
        load(write(tmp_path / "c.py", text))


def test_a_setting_without_dashes_gets_a_hint():
    with pytest.raises(UserError, match=r"config file not found: batch_size=3 \(did you mean --batch_size=3\?\)"):
        load("batch_size=3")


@pytest.mark.parametrize("cls", [train.TrainConfig, sample.SampleConfig, bench.BenchConfig, export.ExportConfig,
                                 checkpoint.ConvertConfig], ids=lambda c: c.__name__)
def test_help_describes_every_setting_in_a_line(cls: type):
    lines = [line for line in configurator.help_text(cls).splitlines() if line.startswith("  --")]
    assert [line[4:].partition("=")[0] for line in lines] == [f.name for f in dataclasses.fields(cls)]
    undescribed = [line for line in lines if not re.fullmatch(r"  --\w+=.*  \(.+?\)  \S.*", line)]
    assert undescribed == []


def test_help_takes_descriptions_from_the_field_comments():
    assert configurator.descriptions(Settings) == {}  # this file's Settings has no comments
    assert configurator.descriptions(train.TrainConfig)["beta2"] == "AdamW beta2"


def test_help_gives_a_description_whole_with_its_continuation_lines_and_inherited_settings():
    # `python train.py --help`: a comment that goes on over the lines below its field is one description; the
    # model settings come from model.ModelSettings, which TrainConfig inherits
    rc, out, err = run_main("train.py", ["--help"])
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    for line in [
        "  --fsdp=False  (bool)  under torchrun: shard the weights, gradients and AdamW state over the processes "
        "(FSDP2), for models whose 16 bytes per parameter do not fit one GPU; checkpoints are then sharded too "
        "(ckpt.dcp)",
        "  --tensor_parallel=1  (int)  under torchrun: split each block's matrices over this many processes "
        "(Megatron); fewer than all of them needs fsdp=True (e.g. 4 processes = FSDP 2 x TP 2)",
        "  --cuda_graph=False  (bool)  replay each step as one CUDA graph, one launch instead of hundreds (one GPU, "
        "bf16/fp32; elsewhere the step runs without it, with a note on a GPU)",
        "  --fp8=False  (bool)  FP8 matrix multiplies (torchao's float8 training; H100-class GPUs): less memory, "
        "faster only for wide models, other numerics, so opt-in; needs pip install torchao",
        "  --n_layer=None  (int | None)  transformer blocks",
        "  --norm=None  (str | None)  layernorm | rmsnorm",
        "  --vocab_multiple=64  (int)  pad the vocabulary to a multiple of this (faster matmuls); 1: no padding",
    ]:
        assert line in lines
    assert not [line for line in lines if "wandb logging" in line or line.strip().startswith("#")]  # no headings


def test_a_comment_after_a_blank_line_heads_a_section_and_describes_no_field(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    source = tmp_path / "described_settings.py"
    source.write_text('''from dataclasses import dataclass


@dataclass
class Base:
    width: int = 8  # how wide
    # and why


@dataclass
class Described(Base):
    depth: int = 2  # how deep, first line
    # its second line

    # a section heading
    rate: float = 0.1
''', encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("described_settings")  # a module with a file: inspect reads its source
    monkeypatch.setitem(sys.modules, "described_settings", module)  # and forgets it after the test
    assert configurator.descriptions(module.Described) == {"width": "how wide and why",
                                                           "depth": "how deep, first line its second line"}


@pytest.mark.parametrize(("overlay", "expected"), [
    ("gpt1", {"post_norm": True, "bias": True, "norm": "layernorm", "mlp": "gelu"}),
    ("gpt3", {"attn_pattern": "alternating", "window_size": 64, "post_norm": False}),  # a quarter of block_size 256
    ("llama", {"norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope", "n_kv_head": 2, "bias": False,
               "tie_embeddings": False})])
def test_an_architecture_overlay_composes_with_a_recipe(overlay: str, expected: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    # python train.py config/train_shakespeare_char.py config/arch/<overlay>.py --dry_run=True: the recipe's shape
    # (6 layers, 6 heads, 384 wide, block 256) with the overlay's block
    built = []
    real = source.for_training
    monkeypatch.setattr(source, "for_training",
                        lambda *args, **kwargs: built.append(real(*args, **kwargs)) or built[-1])
    with pytest.raises(UserError, match="prepare the data first"):  # after the model is built and accounted
        train.main([str(REPO_ROOT / "config" / "train_shakespeare_char.py"),
                    str(REPO_ROOT / "config" / "arch" / f"{overlay}.py"), "--dry_run=True",
                    "--device=cpu", f"--data_root={tmp_path}"])
    (model, _), = built
    config = dataclasses.asdict(model.config)
    assert {k: config[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")} == {
        "n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2}
    assert {k: config[k] for k in expected} == expected
