"""sample.py on a tiny trained checkpoint: as a script, and in process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import checkpoint
import sample
from configurator import UserError
from conftest import Trained, reference_tokens, run_script
from tokenizer import Tokenizer

DELIMITER = "---------------"


@pytest.mark.slow
def test_script_prints_num_samples_starting_with_the_prompt(trained: Trained):
    rc, out, err = run_script("sample.py", [f"--out_dir={trained.out_dir}", "--start=ROMEO:", "--num_samples=3",
                                            "--max_new_tokens=20", "--device=cpu"])
    assert rc == 0, err
    assert out.endswith(f"\n{DELIMITER}\n")
    samples = out[: -len(f"\n{DELIMITER}\n")].split(f"\n{DELIMITER}\n")
    assert len(samples) == 3
    assert all(s.startswith("ROMEO:") for s in samples)
    assert all(len(s) == len("ROMEO:") + 20 for s in samples)


def test_samples_use_only_the_vocabulary(trained: Trained):
    samples = sample.main([f"--out_dir={trained.out_dir}", "--start=First", "--num_samples=4",
                           "--max_new_tokens=50", "--device=cpu", "--temperature=1.5", "--top_k=None"])
    assert len(samples) == 4
    assert all(len(s) == len("First") + 50 for s in samples)
    assert set("".join(samples)) <= set(trained.data.meta["chars"])


def test_prompt_from_file(trained: Trained, tmp_path: Path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("All:\nSpeak, speak.\n", encoding="utf-8")
    samples = sample.main([f"--out_dir={trained.out_dir}", f"--start=FILE:{prompt}", "--num_samples=2",
                           "--max_new_tokens=10", "--device=cpu"])
    assert [s[: len("All:\nSpeak, speak.\n")] for s in samples] == ["All:\nSpeak, speak.\n"] * 2


def test_same_seed_same_samples(trained: Trained):
    args = [f"--out_dir={trained.out_dir}", "--start=A", "--num_samples=2", "--max_new_tokens=30", "--device=cpu"]
    first, again, other = sample.main(args), sample.main(args), sample.main([*args, "--seed=7"])
    assert first == again
    assert first != other


def test_greedy_samples_are_the_reference_decoder_s(trained: Trained):
    samples = sample.main([f"--out_dir={trained.out_dir}", "--start=The", "--num_samples=2", "--max_new_tokens=40",
                           "--device=cpu", "--temperature=0"])
    ckpt = checkpoint.load(str(trained.out_dir), which="best")  # what sample.py reads
    tok = Tokenizer(ckpt["meta"])
    model = checkpoint.model_from(ckpt).eval()
    model.crop_vocab(tok.vocab_size)
    expected = reference_tokens(model, torch.tensor([tok.encode("The")]), 40)[0]  # past block_size 32
    assert samples == [tok.decode(expected.tolist())] * 2


def test_checkpoint_without_tokenizer_is_refused(trained: Trained, tmp_path: Path):
    ckpt = torch.load(trained.out_dir / "ckpt.pt", weights_only=True)
    del ckpt["meta"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="tokenizer"):
        sample.main([f"--out_dir={tmp_path}", "--device=cpu", "--max_new_tokens=2"])
