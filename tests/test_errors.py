"""User mistakes end in one `error: ...` line on stderr and exit status 2, never a traceback; a failed run leaves
the last good checkpoint as it was.

Each case runs through its script's entry point in this process (conftest.run_main); a few also run as real
subprocesses, all started together, to check the scripts' wiring end to end. The cases are grouped by what is
wrong: a setting, the data, the checkpoint, or what sample.py is asked. Faults during a run (signals, kills,
NaN losses, an out_dir that cannot hold checkpoints) are test_faults.py's; a torchrun launch's refusals,
test_ddp.py's."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import runtime
import train
from configurator import UserError
from conftest import CharData, Trained, make_char_dataset, prepare_module, run_main, run_script, tiny_flags

Case = tuple[str | ModuleType, list[str], str]  # script (or prepare module), arguments, what the error line says


def dataset_variant(root: Path, trained: Trained, name: str) -> CharData:
    """A copy of the trained run's dataset under a new name, to be broken by the caller."""
    shutil.copytree(trained.data.dir, root / name)
    return CharData(root, name, trained.data.meta)


def corrupt_checkpoint(root: Path, trained: Trained, name: str, damage: Callable[[bytes], bytes]) -> Path:
    out_dir = root / name
    out_dir.mkdir()
    (out_dir / "ckpt.pt").write_bytes(damage((trained.out_dir / "ckpt.pt").read_bytes()))
    return out_dir


def meta_variant(root: Path, trained: Trained, name: str, **change: object) -> CharData:
    variant = dataset_variant(root, trained, name)
    (variant.dir / "meta.json").write_text(json.dumps(trained.data.meta | change), encoding="utf-8")
    return variant


def input_txt(root: Path, name: str, content: bytes) -> Path:
    """A folder holding input.txt with these bytes, for a prepare script to read."""
    folder = root / name
    folder.mkdir()
    (folder / "input.txt").write_bytes(content)
    return folder


def bad_setting_cases(root: Path, trained: Trained) -> dict[str, Case]:
    """Flags and config files that say something train.py cannot do."""
    data = trained.data
    raising = root / "raising_config.py"
    raising.write_text("batch_size = 8\nx = 1 / 0\n", encoding="utf-8")
    a_file = root / "a_file"
    a_file.write_text("not a folder", encoding="utf-8")
    nan_config = root / "nan_config.py"
    nan_config.write_text("min_lr = float('nan')\n", encoding="utf-8")
    return {
        "unknown_setting": ("train.py", ["--lerning_rate=1e-3"], "did you mean 'learning_rate'"),
        "bad_int": ("train.py", ["--batch_size=abc"], "'batch_size' expects int, got 'abc'"),
        "setting_without_dashes": ("train.py", ["batch_size=3"], "did you mean --batch_size=3?"),
        "missing_config_file": ("train.py", [str(root / "no_such_config.py")], "config file not found"),
        "config_file_raises": ("train.py", [str(raising)], "raising_config.py, line 2: ZeroDivisionError"),
        "heads_do_not_divide_width": ("train.py", tiny_flags(data, root / "o5", n_embd=30, n_head=4),
                                      "n_embd (30) must be divisible by n_head (4)"),
        "negative_learning_rate": ("train.py", tiny_flags(data, root / "o10", learning_rate=-1),
                                   "learning_rate must be at least 0, got -1.0"),
        "out_dir_under_a_file": ("train.py", tiny_flags(data, a_file / "out"), "cannot hold checkpoints"),
        "fp8_without_an_fp8_gpu": ("train.py", tiny_flags(data, root / "o6", fp8=True),  # with torchao or without
                                   "fp8=True needs a CUDA GPU with FP8 matrix multiplies (H100, L4, RTX 40xx), not"),
        "fsdp_in_one_process": ("train.py", tiny_flags(data, root / "o11", fsdp=True),
                                "fsdp=True needs several processes: start it with torchrun --nproc_per_node=N "
                                "train.py ..."),
        "nan_learning_rate": ("train.py", tiny_flags(data, root / "o12", learning_rate="nan"),
                              "setting 'learning_rate' must be a finite number, got nan"),
        "inf_grad_clip": ("train.py", tiny_flags(data, root / "o13", grad_clip="inf"),
                          "setting 'grad_clip' must be a finite number, got inf"),
        "nan_min_lr_in_a_config_file": ("train.py", [str(nan_config), *tiny_flags(data, root / "o14")],
                                        "setting 'min_lr' must be a finite number, got nan"),
        "absurd_learning_rate": ("train.py", tiny_flags(data, root / "o15", learning_rate=1e30),
                                 "learning_rate must be in [0, 1], got 1e+30"),
        "zero_target_val_loss": ("train.py", tiny_flags(data, root / "o24", target_val_loss=0),
                                 "target_val_loss must be above 0 (a loss a run can reach), got 0"),
        "negative_target_val_loss": ("train.py", tiny_flags(data, root / "o25", target_val_loss=-1),
                                     "target_val_loss must be above 0 (a loss a run can reach), got -1"),
        "min_lr_above_learning_rate": ("train.py", tiny_flags(data, root / "o16", min_lr=0.1, decay_lr=True),
                                       "min_lr (0.1) is above learning_rate (0.01): the schedule would rise"),
        "negative_max_skipped_steps": ("train.py", tiny_flags(data, root / "o17", max_skipped_steps=-1),
                                       "max_skipped_steps must be at least 0 (0: never), got -1"),
        "zero_max_iters": ("train.py", tiny_flags(data, root / "o18", max_iters=0),
                           "max_iters must be at least 1 (to evaluate a checkpoint without training: eval_only"),
        "negative_seed": ("train.py", tiny_flags(data, root / "o19", seed=-1), "seed must be in [0, 2**63), got -1"),
        "huge_seed": ("train.py", tiny_flags(data, root / "o20", seed=10**20),
                      "seed must be in [0, 2**63), got 100000000000000000000"),
        "absurd_batch_size": ("train.py", tiny_flags(data, root / "o22", batch_size=10**12),
                              "training at batch_size 1000000000000 and block_size 32 needs about"),
        "absurd_block_size": ("train.py", tiny_flags(data, root / "o23", block_size=10**11),
                              "training at batch_size 8 and block_size 100000000000 needs about"),
        "cpu_with_an_index": ("train.py", [*tiny_flags(data, root / "o21"), "--device=cpu:7"],
                              "device=cpu:7: the CPU is one device; use device=cpu"),
        "bench_vocab_size_zero": ("bench.py", ["--vocab_size=0", "--device=cpu"],
                                  "vocab_size must be at least 1 (or None), got 0"),
        "bench_json_into_a_missing_folder": ("bench.py", ["--device=cpu", f"--json={root / 'nowhere' / 'x.json'}"],
                                             "cannot write into"),
    }


def bad_data_cases(root: Path, trained: Trained) -> dict[str, Case]:
    """Datasets missing, short, damaged or described wrongly, and prepare scripts' inputs that hold no text."""
    data = trained.data
    no_bin = dataset_variant(root, trained, "no_bin")
    (no_bin.dir / "train.bin").unlink()
    short = dataset_variant(root, trained, "short")
    np.arange(20, dtype=np.uint16).tofile(short.dir / "train.bin")
    bad_ids = dataset_variant(root, trained, "bad_ids")
    np.full(5000, 60000, dtype=np.uint16).tofile(bad_ids.dir / "train.bin")
    odd_bin = dataset_variant(root, trained, "odd_bin")
    (odd_bin.dir / "train.bin").write_bytes((data.dir / "train.bin").read_bytes() + b"\0")
    empty, latin1 = input_txt(root, "empty_in", b""), input_txt(root, "latin1_in", "Caf\u00e9\n".encode("latin-1"))
    no_text = "holds no text: nothing to prepare"
    not_utf8 = "input.txt is not UTF-8 text: byte 3 (0xe9) is not valid UTF-8"
    return {
        "missing_dataset_dir": ("train.py", tiny_flags(CharData(root, "nothing_here", {}), root / "o1"),
                                "python data/nothing_here/prepare.py"),
        "missing_bin": ("train.py", tiny_flags(no_bin, root / "o2"), "train.bin not found"),
        "short_dataset": ("train.py", tiny_flags(short, root / "o3"), "fewer than block_size + 1 = 33"),
        "token_id_beyond_vocab": ("train.py", tiny_flags(bad_ids, root / "o4"), "token id 60000 >= vocab_size"),
        "bin_not_whole_token_ids": ("train.py", tiny_flags(odd_bin, root / "o9"), "not a whole number of uint16"),
        "meta_dtype_float64": ("train.py", tiny_flags(meta_variant(root, trained, "f64", dtype="float64"), root / "o6"),
                               "dtype must be one of uint16, uint32, got 'float64'"),
        "meta_dtype_uint8": ("train.py", tiny_flags(meta_variant(root, trained, "u8", dtype="uint8"), root / "o7"),
                             "dtype must be one of uint16, uint32, got 'uint8'"),
        "meta_dtype_unknown": ("train.py", tiny_flags(meta_variant(root, trained, "i7", dtype="int7"), root / "o8"),
                               "dtype must be one of uint16, uint32, got 'int7'"),
        "prepare_char_empty_input": (prepare_module("shakespeare_char"), [f"--out_dir={empty}", "--url="], no_text),
        "prepare_bpe_empty_input": (prepare_module("shakespeare"), [f"--out_dir={empty}", "--url="], no_text),
        "prepare_char_input_not_utf8": (prepare_module("shakespeare_char"), [f"--out_dir={latin1}", "--url="],
                                        not_utf8),
        "prepare_bpe_input_not_utf8": (prepare_module("shakespeare"), [f"--out_dir={latin1}", "--url="], not_utf8),
    }


def bad_checkpoint_cases(root: Path, trained: Trained) -> dict[str, Case]:
    """A resume from no checkpoint, a damaged one, or into another shape."""
    data = trained.data
    resume = {"init_from": "resume"}
    random_bytes = corrupt_checkpoint(root, trained, "random", lambda b: np.random.default_rng(0).bytes(len(b)))
    truncated = corrupt_checkpoint(root, trained, "truncated", lambda b: b[: len(b) // 2])
    other_shape = corrupt_checkpoint(root, trained, "other_shape", lambda b: b)
    other_chars = make_char_dataset(root, "other_chars", "to be or not to be, that is the question " * 40)
    return {
        "resume_without_checkpoint": ("train.py", tiny_flags(data, root / "empty", **resume), "no checkpoint at"),
        "resume_random_bytes": ("train.py", tiny_flags(data, random_bytes, **resume), "corrupt or truncated"),
        "resume_on_another_char_vocabulary": ("train.py", tiny_flags(other_chars, other_shape, **resume),
                                              f"the model was trained on {len(data.meta['chars'])} characters, "
                                              f"{other_chars.dir} has another vocabulary (14 characters): resume on "
                                              "data prepared with its characters"),
        "resume_truncated": ("train.py", tiny_flags(data, truncated, **resume), "corrupt or truncated"),
        "resume_with_a_preset_of_another_shape": ("train.py", [f"--data_root={data.root}", f"--dataset={data.name}",
                                                               f"--out_dir={other_shape}", "--device=cpu",
                                                               "--init_from=resume", "--preset=gpt2"],
                                                  "the settings ask for block_size=1024 (from preset 'gpt2')"),
    }


def bad_sampling_cases(root: Path, trained: Trained) -> dict[str, Case]:
    """Prompts, texts to score and sampling controls that sample.py cannot use."""
    out = trained.out_dir
    (root / "empty.txt").write_text("", encoding="utf-8")
    latin1 = root / "latin1.txt"
    latin1.write_bytes("Ros\u00e9 wine".encode("latin-1"))
    missing = root / "missing.txt"

    def sample_args(*flags: str) -> list[str]:
        return [f"--out_dir={out}", "--device=cpu", "--max_new_tokens=2", *flags]

    return {
        "sample_unknown_characters": ("sample.py", [f"--out_dir={out}", "--device=cpu", "--start=snow\u2603man"],
                                      "characters not in the model's vocabulary: '\u2603'"),
        "sample_prompt_file_not_utf8": ("sample.py", [f"--out_dir={out}", "--device=cpu", f"--start=FILE:{latin1}"],
                                        "latin1.txt is not UTF-8 text: byte 3 (0xe9) is not valid UTF-8"),
        "sample_missing_prompt_file": ("sample.py", [f"--out_dir={out}", "--device=cpu", f"--start=FILE:{missing}"],
                                       f"file not found: {missing}"),
        "sample_top_p_zero": ("sample.py", sample_args("--top_p=0"), "top_p must be in (0, 1], got 0.0"),
        "sample_top_p_above_one": ("sample.py", sample_args("--top_p=1.5"), "top_p must be in (0, 1], got 1.5"),
        "sample_top_k_zero": ("sample.py", sample_args("--top_k=0"), "top_k must be at least 1 (or None), got 0"),
        "sample_negative_temperature": ("sample.py", sample_args("--temperature=-1"),
                                        "temperature must be >= 0, got -1.0"),
        "sample_repetition_penalty_zero": ("sample.py", sample_args("--repetition_penalty=0"),
                                           "repetition_penalty must be > 0, got 0.0"),
        "sample_nan_temperature": ("sample.py", sample_args("--temperature=nan"),
                                   "setting 'temperature' must be a finite number, got nan"),
        "sample_nan_repetition_penalty": ("sample.py", sample_args("--repetition_penalty=nan"),
                                          "setting 'repetition_penalty' must be a finite number, got nan"),
        "sample_absurd_num_samples": ("sample.py", sample_args("--num_samples=100000000000"),
                                      "num_samples=100000000000 (a KV cache row each) needs about"),
        "sample_no_new_tokens": ("sample.py", [f"--out_dir={out}", "--device=cpu", "--max_new_tokens=0"],
                                 "max_new_tokens must be at least 1"),
        "sample_empty_prompt_without_end_of_text": ("sample.py", sample_args("--start="),
                                                    "empty prompt and this tokenizer has no end-of-text token"),
        "score_empty_text": ("sample.py", sample_args(f"--score=FILE:{root / 'empty.txt'}"),
                             "--score needs a text of at least two tokens"),
        "score_single_token": ("sample.py", sample_args("--score=A"), "--score needs a text of at least two tokens"),
    }


def build_cases(root: Path, trained: Trained) -> dict[str, Case]:
    return (bad_setting_cases(root, trained) | bad_data_cases(root, trained) | bad_checkpoint_cases(root, trained)
            | bad_sampling_cases(root, trained))


CASES = ["unknown_setting", "bad_int", "setting_without_dashes", "missing_config_file", "config_file_raises",
         "heads_do_not_divide_width", "negative_learning_rate", "out_dir_under_a_file", "fp8_without_an_fp8_gpu",
         "fsdp_in_one_process", "nan_learning_rate", "inf_grad_clip", "nan_min_lr_in_a_config_file",
         "absurd_learning_rate", "zero_target_val_loss", "negative_target_val_loss", "min_lr_above_learning_rate",
         "negative_max_skipped_steps", "zero_max_iters",
         "negative_seed", "huge_seed", "cpu_with_an_index", "absurd_batch_size", "absurd_block_size",
         "bench_vocab_size_zero", "bench_json_into_a_missing_folder",
         "missing_dataset_dir", "missing_bin", "short_dataset", "token_id_beyond_vocab", "bin_not_whole_token_ids",
         "meta_dtype_float64", "meta_dtype_uint8", "meta_dtype_unknown", "prepare_char_empty_input",
         "prepare_bpe_empty_input", "prepare_char_input_not_utf8", "prepare_bpe_input_not_utf8",
         "resume_without_checkpoint", "resume_random_bytes", "resume_truncated", "resume_on_another_char_vocabulary",
         "resume_with_a_preset_of_another_shape",
         "sample_unknown_characters", "sample_prompt_file_not_utf8", "sample_missing_prompt_file",
         "sample_top_p_zero", "sample_top_p_above_one", "sample_top_k_zero",
         "sample_negative_temperature", "sample_repetition_penalty_zero", "sample_nan_temperature",
         "sample_absurd_num_samples", "sample_nan_repetition_penalty", "sample_no_new_tokens",
         "sample_empty_prompt_without_end_of_text", "score_empty_text", "score_single_token"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> dict[str, Case]:
    built = build_cases(tmp_path_factory.mktemp("errors"), trained)
    assert sorted(built) == sorted(CASES)
    return built


def check_one_line_exit_2(result: tuple[int, str, str], expected: str) -> None:
    rc, _, err = result
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # the one line is all of stderr
    assert expected in err


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line_and_exit_2(cases: dict[str, Case], case: str):
    script, args, expected = cases[case]
    check_one_line_exit_2(run_main(script, args), expected)


SCRIPTED = ["bad_int", "sample_top_p_zero"]  # train.py and sample.py as real scripts too


@pytest.fixture(scope="module")
def script_runs(cases: dict[str, Case]) -> dict[str, tuple[int, str, str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_script, *cases[name][:2]) for name in SCRIPTED}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", SCRIPTED)
def test_script_error_is_one_line_and_exit_2(cases: dict[str, Case], script_runs: dict[str, tuple[int, str, str]],
                                             case: str):
    check_one_line_exit_2(script_runs[case], cases[case][2])


@pytest.mark.slow
def test_bad_flag_stderr_is_exactly_one_line(script_runs: dict[str, tuple[int, str, str]]):
    _, out, err = script_runs["bad_int"]
    assert err == "error: setting 'batch_size' expects int, got 'abc'\n"
    assert out == ""


def test_bfloat16_where_the_device_has_none_is_one_line(char_data: CharData, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)
    with pytest.raises(UserError, match="dtype=bfloat16 but device cpu has no bfloat16 support"):
        train.main(tiny_flags(char_data, tmp_path / "out", dtype="bfloat16"))


def test_float16_without_cuda_is_one_line(char_data: CharData, tmp_path: Path):
    with pytest.raises(UserError, match="dtype=float16 needs a CUDA device"):
        train.main(tiny_flags(char_data, tmp_path / "out", dtype="float16"))


def test_token_id_in_the_vocab_padding_is_refused(tmp_path: Path):
    # 62 characters: the model's vocabulary is padded to 64, but ids 62 and 63 mean nothing to the tokenizer
    data = make_char_dataset(tmp_path / "data")
    assert data.meta["vocab_size"] == 62
    ids = np.fromfile(data.dir / "train.bin", dtype=np.uint16)
    ids[::8] = 62
    ids.tofile(data.dir / "train.bin")
    with pytest.raises(UserError, match="token id 62 >= vocab_size 62"):
        train.main(tiny_flags(data, tmp_path / "out", max_iters=1))


def test_failed_resume_leaves_the_checkpoint_intact(trained: Trained, tmp_path: Path):
    out_dir = tmp_path / "out"
    shutil.copytree(trained.out_dir, out_dir)
    before = (out_dir / "ckpt.pt").read_bytes()
    bad = dataset_variant(tmp_path, trained, "bad")
    np.full(5000, 60000, dtype=np.uint16).tofile(bad.dir / "train.bin")
    with pytest.raises(UserError, match="token id"):
        train.main(tiny_flags(bad, out_dir, init_from="resume", max_iters=20, eval_interval=6))
    assert (out_dir / "ckpt.pt").read_bytes() == before


@pytest.mark.parametrize("package", ["wandb", "transformers", "datasets"])
def test_a_missing_optional_package_is_one_line_naming_it(char_data: CharData, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, package: str):
    # requirements-extra.txt is not part of the quick start's install
    script: str | ModuleType = "train.py"
    args = {"wandb": tiny_flags(char_data, tmp_path / "out", wandb_log=True),
            "transformers": ["--init_from=gpt2", "--device=cpu", "--max_new_tokens=2"],
            "datasets": [f"--out_dir={tmp_path / 'out'}"]}[package]
    if package == "transformers":
        script = "sample.py"
    if package == "datasets":
        script = prepare_module("openwebtext")  # loaded (and cached) with datasets, before it goes missing
        monkeypatch.setattr(script, "datasets", None)  # as its guarded import leaves it
    monkeypatch.setitem(sys.modules, package, None)  # `import package` fails as if it were not installed
    purpose = {"wandb": "wandb_log=True", "transformers": "init_from=gpt2",
               "datasets": "data/openwebtext/prepare.py"}[package]
    check_one_line_exit_2(run_main(script, args),
                          f"{purpose} needs the {package} package: pip install -r requirements-extra.txt")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing trained or written
