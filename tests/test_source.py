"""source.py: a model from its source, one way for every script: ready to decode (sample.py, export.py), padded as
it was trained (evaluate.py), in the working dtype; and the one check that data's ids are the model's tokens."""

from __future__ import annotations

import re

import pytest
import torch

import checkpoint
import source
from configurator import UserError
from conftest import Trained
from model import ModelSettings
from source import Source, check_tokens
from tokenizer import GPT2_META


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.arange(8)[None])[0]


@pytest.mark.parametrize("which", ["best", "latest"])
def test_a_checkpoint_is_ready_to_decode(trained: Trained, which: str):
    opened = Source.open("resume", str(trained.out_dir), which)
    model, tok = opened.model(), opened.tokenizer()
    ckpt = checkpoint.read(str(trained.out_dir), which)  # its tensors as saved
    vocab = trained.data.meta["vocab_size"]  # 62 characters; the model was trained with 64 rows
    assert (tok.kind, tok.vocab_size, ckpt.header.model_args["vocab_size"]) == ("char", vocab, 64)
    assert tok.encode("First") == [trained.data.meta["chars"].index(c) for c in "First"]
    assert model.config.vocab_size == vocab
    assert not model.training
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after cropping
    weights = model.state_dict()
    assert weights.keys() == ckpt.model.keys()
    for name, saved in ckpt.model.items():  # the padding rows cropped, every other weight as saved
        cropped = name in ("transformer.wte.weight", "lm_head.weight")
        assert torch.equal(weights[name], saved[:vocab] if cropped else saved), name
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(logits(model), logits(ckpt.build_model())[..., :vocab])  # the padding rows, never sampled


def test_padded_is_the_model_as_it_was_trained_and_evaluated(trained: Trained):
    model = Source.open("resume", str(trained.out_dir)).model(padded=True)
    full = checkpoint.read(str(trained.out_dir), "best").build_model()
    assert model.config.vocab_size == 64 and not model.training
    assert torch.equal(logits(model), logits(full))


def test_the_working_dtype_is_the_weights_dtype(trained: Trained):
    model = Source.open("resume", str(trained.out_dir), "latest").model("cpu", torch.bfloat16)
    full = Source.open("resume", str(trained.out_dir), "latest").model()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training
    for (name, p), q in zip(model.named_parameters(), full.parameters(), strict=True):
        assert torch.equal(p, q.to(torch.bfloat16)), name


def test_an_unknown_source_is_one_line():
    with pytest.raises(UserError, match=r"^init_from must be resume or one of gpt2, gpt2-medium, gpt2-large, "
                                        r"gpt2-xl, got 'scratch'$"):
        Source.open("scratch", "out")


@pytest.mark.parametrize(("kind", "chars", "meta", "message"), [
    ("char", "ab", {"tokenizer": "gpt2"}, "the model was trained on char tokens, D has gpt2 tokens: resume on data "
                                          "with its tokenizer"),
    ("char", "ab", {"tokenizer": "char", "chars": "ac"}, "the model was trained on 2 characters, D has another "
                                                         "vocabulary (2 characters): resume on data prepared with "
                                                         "its characters"),
    ("gpt2", None, {"tokenizer": "char", "chars": "abc"}, "the model was trained on gpt2 tokens, D has char "
                                                          "tokens: resume on data with its tokenizer")])
def test_data_of_other_tokens_is_refused(kind: str, chars: str | None, meta: dict, message: str):
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        check_tokens(kind, chars, meta, "D", "resume on")


@pytest.mark.parametrize(("kind", "chars", "meta"), [("char", "ab", {"tokenizer": "char", "chars": "ab"}),
                                                     ("gpt2", None, {"tokenizer": "gpt2"})])
def test_data_of_the_same_tokens_passes(kind: str, chars: str | None, meta: dict):
    check_tokens(kind, chars, meta, "D", "resume on")  # raises nothing


@pytest.mark.parametrize(("flags", "message"), [
    ({"value_embeds": 2}, "value_embeds=0), the settings ask for value_embeds=2"),
    ({"tie_embeddings": False}, "tie_embeddings=True), the settings ask for tie_embeddings=False"),
    ({"n_layer": 6}, "n_layer=12), the settings ask for n_layer=6")])
def test_gpt2_s_weights_refuse_settings_that_would_build_another_model(flags: dict, message: str):
    settings = ModelSettings(**flags)
    with pytest.raises(UserError, match=rf"^init_from=gpt2 is OpenAI's model as it is \({re.escape(message)}: drop "
                                        r"it, or train from scratch$"):
        source.for_training(settings, "gpt2", "out", "adamw", dict(GPT2_META), "data/x", torch.device("cpu"),
                            lambda config: None, dry_run=True)
    shorter = source.for_training(ModelSettings(block_size=256, dropout=0.1), "gpt2", "out", "adamw",
                                  dict(GPT2_META), "data/x", torch.device("cpu"), lambda config: None, dry_run=True)
    assert (shorter[0].config.block_size, shorter[0].config.dropout) == (256, 0.1)  # cropped: still GPT-2's weights
