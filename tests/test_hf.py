"""OpenAI GPT-2 weights come in through transformers: the conversion is checked offline on a small random model."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from generate import GREEDY, generate
from model import GPT


def small_hf_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_positions=64, n_embd=48, n_layer=2, n_head=4, vocab_size=101, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def test_converted_logits_match_transformers():
    hf = small_hf_model()
    ours = GPT.from_hf(hf).eval()
    x = torch.randint(0, 101, (3, 40))
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)[0]).abs().max().item()
    assert diff <= 1e-4
    assert ours.get_num_params(non_embedding=False) == sum(p.numel() for p in hf.parameters())


def test_converted_greedy_generation_matches_transformers():
    hf = small_hf_model()
    ours = GPT.from_hf(hf).eval()
    x = torch.randint(1, 101, (2, 8))
    with torch.no_grad():
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                             min_new_tokens=12, pad_token_id=0)
    assert torch.equal(generate(ours, x, 12, GREEDY), theirs)
