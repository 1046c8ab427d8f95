"""dataloader.py: training batches as a pure function of (seed, index), the evaluation's fixed batches, and the
token files refused before any training time is spent (missing, short, damaged, or prepared for another
vocabulary)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from configurator import UserError
from dataloader import Batches, EvalBatches, max_token


def counting_file(tmp_path: Path, n: int = 1000) -> Path:
    """Token i at position i: every row says where it starts."""
    path = tmp_path / "count.bin"
    np.arange(n, dtype=np.uint16).tofile(path)
    return path


def test_batches_y_is_x_shifted_by_one(tmp_path: Path):
    path = counting_file(tmp_path)
    raw = np.fromfile(path, dtype=np.uint16).astype(np.int64)
    x, y = Batches(str(path), "uint16", 16, 8, 1000, seed=0).read(3)
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.int64
    for xr, yr in zip(x.numpy(), y.numpy()):
        start = xr[0]
        assert np.array_equal(xr, raw[start:start + 16])
        assert np.array_equal(yr, raw[start + 1:start + 17])


def test_batches_reach_the_last_token(tmp_path: Path):
    path = counting_file(tmp_path, n=20)
    batches = Batches(str(path), "uint16", 16, 64, 1000, seed=0)
    starts = {int(s) for k in range(4) for s in batches.read(k)[0][:, 0]}
    assert starts == set(range(4))  # every sequence of 17 tokens in 20, the last one included


def test_batches_are_a_function_of_seed_and_index(tmp_path: Path):
    path = str(counting_file(tmp_path))

    def batch(seed: int, k: int) -> torch.Tensor:
        return Batches(path, "uint16", 16, 8, 1000, seed=seed).read(k)[0]

    assert torch.equal(batch(1, 5), batch(1, 5))
    sampler = Batches(path, "uint16", 16, 8, 1000, seed=1)
    sampler.read(9)  # reading other batches first changes nothing
    assert torch.equal(sampler.read(5)[0], batch(1, 5))
    assert not torch.equal(batch(1, 5), batch(1, 6))
    assert not torch.equal(batch(1, 5), batch(2, 5))


def test_shuffled_order_reads_every_window_once_an_epoch_in_a_random_order(tmp_path: Path):
    # 1000 tokens in windows of 16 (+1): 62 windows an epoch, 999 - 62 * 16 = 7 tokens of slack for the offset
    path = str(counting_file(tmp_path))
    batches = Batches(path, "uint16", 16, 8, 1000, seed=3, order="shuffled")
    starts = [int(s) for k in range(31) for s in batches.read(k)[0][:, 0]]  # 248 sequences: 4 epochs
    for epoch in range(4):
        mine = starts[62 * epoch:62 * (epoch + 1)]
        offset = min(mine)
        assert 0 <= offset <= 7 and sorted(mine) == [offset + 16 * w for w in range(62)]  # each window once
        assert mine != sorted(mine)  # in a random order
    assert starts[:62] != starts[62:124]  # each epoch an order of its own
    x, y = batches.read(0)
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) + 1 <= 999  # whole windows, inside the file


def test_shuffled_order_is_a_function_of_seed_and_sequence_whatever_the_batch_size(tmp_path: Path):
    path = str(counting_file(tmp_path))
    eights = Batches(path, "uint16", 16, 8, 1000, seed=3, order="shuffled")
    fours = Batches(path, "uint16", 16, 4, 1000, seed=3, order="shuffled")
    whole = torch.cat([eights.read(k)[0] for k in range(10)])
    assert torch.equal(torch.cat([fours.read(k)[0] for k in range(20)]), whole)  # micro-batches: the same stream
    late = Batches(path, "uint16", 16, 8, 1000, seed=3, order="shuffled")
    assert torch.equal(late.read(9)[0], whole[72:])  # a resume reads what an unbroken run would
    other = Batches(path, "uint16", 16, 8, 1000, seed=4, order="shuffled")
    assert not torch.equal(other.read(0)[0], whole[:8])


def test_rows_are_the_sequences_at_the_given_offsets(tmp_path: Path):
    x, y = Batches(str(counting_file(tmp_path)), "uint16", 4, 2, 1000, seed=0).rows([7, 0, 990])
    assert x.tolist() == [[7, 8, 9, 10], [0, 1, 2, 3], [990, 991, 992, 993]]
    assert y.tolist() == [[8, 9, 10, 11], [1, 2, 3, 4], [991, 992, 993, 994]]


def test_get_gives_the_read_batch_on_the_device(tmp_path: Path):
    batches = Batches(str(counting_file(tmp_path)), "uint16", 16, 8, 1000, seed=3)
    x, y = batches.get(2, torch.device("cpu"))
    expected = batches.read(2)
    assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])


def test_eval_batches_cover_a_small_split_exactly_once(tmp_path: Path):
    path = counting_file(tmp_path, n=100)  # 99 targets: 6 whole sequences of 16, the last 3 tokens unread
    evals = EvalBatches(str(path), "uint16", 16, 4, 1000, max_batches=10)
    assert evals.n_batches == 2
    xs, ys = zip(*(evals.read(k) for k in range(2)))
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(x[:6].flatten(), torch.arange(96)) and torch.equal(y[:6].flatten(), torch.arange(1, 97))
    assert (y[6:] == -1).all() and x.shape == (8, 16)  # the last batch filled out with ignored rows


def test_eval_batches_spread_over_a_large_split_in_the_same_places(tmp_path: Path):
    path = str(counting_file(tmp_path, n=1000))  # 62 sequences of 16, 3 batches of 4 wanted
    evals = EvalBatches(path, "uint16", 16, 4, 1000, max_batches=3)
    assert evals.n_batches == 3
    starts = [int(s) for k in range(3) for s in evals.read(k)[0][:, 0]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(s % 16 == 0 for s in starts) and min(gaps) >= 16 and max(gaps) - min(gaps) <= 16  # evenly spread
    assert starts[0] == 0 and starts[-1] >= 1000 - 2 * max(gaps)  # from the start to the end
    again = EvalBatches(path, "uint16", 16, 4, 1000, 3)
    assert starts == [int(s) for k in range(3) for s in again.read(k)[0][:, 0]]


def test_batches_refuse_token_ids_beyond_vocab(tmp_path: Path):
    path = tmp_path / "bad.bin"
    np.full(100, 7, dtype=np.uint16).tofile(path)
    Batches(str(path), "uint16", 16, 4, 8, seed=0).read(0)  # 7 < 8: fine
    with pytest.raises(UserError, match="token id 7 >= vocab_size 7"):
        Batches(str(path), "uint16", 16, 4, 7, seed=0)


def test_one_token_beyond_the_vocabulary_anywhere_is_found_at_start(tmp_path: Path):
    ids = np.zeros(5000, dtype=np.uint16)
    ids[4321] = 9  # far from any batch read first
    ids.tofile(tmp_path / "train.bin")
    with pytest.raises(UserError, match=r"holds token id 9 >= vocab_size 7: it was prepared for another vocabulary"):
        Batches(str(tmp_path / "train.bin"), "uint16", 16, 4, 7, seed=0)


def test_a_bin_that_is_not_whole_token_ids_is_refused(tmp_path: Path):
    (tmp_path / "train.bin").write_bytes(b"\0" * 101)
    with pytest.raises(UserError, match="is 101 bytes, not a whole number of uint16 token ids"):
        Batches(str(tmp_path / "train.bin"), "uint16", 16, 4, 7, seed=0)


def test_a_missing_bin_names_the_prepare_script(tmp_path: Path):
    missing = tmp_path / "tiny" / "train.bin"
    with pytest.raises(UserError, match=rf"train\.bin not found: run python .*tiny{os.sep}prepare\.py$"):
        Batches(str(missing), "uint16", 16, 4, 7, seed=0)


def test_a_bin_shorter_than_one_sequence_is_refused(tmp_path: Path):
    path = counting_file(tmp_path, n=16)
    Batches(str(path), "uint16", 15, 4, 1000, seed=0)  # 16 tokens: one sequence of 15 and its targets
    with pytest.raises(UserError, match=r"has 16 tokens, fewer than block_size \+ 1 = 17"):
        Batches(str(path), "uint16", 16, 4, 1000, seed=0)


def test_max_token_is_the_largest_id_and_follows_a_rewritten_file(tmp_path: Path):
    path = tmp_path / "ids.bin"
    ids = np.random.default_rng(0).integers(0, 300, size=2000).astype(np.uint16)
    ids.tofile(path)

    def scanned() -> int:
        return max_token(str(path), "uint16", os.path.getsize(path), os.path.getmtime(path))

    assert scanned() == ids.max()
    np.append(ids, np.uint16(5000)).tofile(path)  # another size: another cache key
    assert scanned() == 5000
    assert max_token(str(tmp_path / "empty.bin"), "uint16", 0, 0.0) == 0


def test_uint32_ids_under_a_uint16_meta_are_refused(tmp_path: Path):
    ids = np.random.default_rng(0).integers(0, 65, size=5000)  # a char vocabulary's ids
    ids.astype(np.uint32).tofile(tmp_path / "wide.bin")
    with pytest.raises(UserError, match=r"wide\.bin looks like uint32 token ids \(every other uint16 is 0\), but its "
                                        r"meta\.json says uint16"):
        Batches(str(tmp_path / "wide.bin"), "uint16", 16, 4, 65, seed=0)
    Batches(str(tmp_path / "wide.bin"), "uint32", 16, 4, 65, seed=0).read(0)  # read as what it is: fine
    ids.astype(np.uint16).tofile(tmp_path / "narrow.bin")
    Batches(str(tmp_path / "narrow.bin"), "uint16", 16, 4, 65, seed=0).read(0)  # real uint16 ids: fine


def test_a_token_file_truncated_during_the_run_is_one_line(tmp_path: Path):
    path = counting_file(tmp_path)
    batches = Batches(str(path), "uint16", 16, 4, 1000, seed=0)
    np.arange(20, dtype=np.uint16).tofile(path)  # replaced under the run by a shorter file
    with pytest.raises(UserError, match=r"count\.bin is shorter than when the run began \(1000 tokens\): it was "
                                        r"replaced or truncated during the run"):
        for k in range(10):
            batches.read(k)
