"""ml.training.batches: the batches ``fit`` trains on, read in place from arrays in a seeded order per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from ml.training import aligned_empty, batches

ROWS, SIZE = 1_000, 64


def _arrays():
    x = {"numeric": aligned_empty((ROWS, 3), np.float32), "code": aligned_empty((ROWS,), np.int32)}
    x["numeric"][...] = np.arange(ROWS, dtype=np.float32)[:, None] * [1, 2, 3]
    x["code"][...] = np.arange(ROWS)
    y = aligned_empty((ROWS,), np.float32)
    y[...] = np.arange(ROWS) % 2
    return x, y


def _epoch(dataset) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    return [({k: v.numpy() for k, v in x.items()}, y.numpy()) for x, y in dataset]


def _rows(epoch) -> np.ndarray:
    return np.concatenate([x["code"] for x, _ in epoch])


def test_every_row_once_an_epoch_with_its_own_inputs_and_label_in_full_batches_then_the_rest():
    x, y = _arrays()
    dataset = batches(x, y, SIZE, seed=3)
    assert int(dataset.cardinality()) == -(-ROWS // SIZE)
    epoch = _epoch(dataset)
    assert [len(labels) for _, labels in epoch] == [SIZE] * (ROWS // SIZE) + [ROWS % SIZE]
    assert sorted(_rows(epoch)) == list(range(ROWS))
    for inputs, labels in epoch:  # each row's fields and label travel together
        np.testing.assert_array_equal(inputs["numeric"], inputs["code"][:, None] * np.array([1, 2, 3]))
        np.testing.assert_array_equal(labels, inputs["code"] % 2)


def test_each_epoch_is_a_new_permutation_that_the_seed_repeats():
    x, y = _arrays()
    first, second = batches(x, y, SIZE, seed=3), batches(x, y, SIZE, seed=3)
    a = [_rows(_epoch(first)) for _ in range(3)]
    b = [_rows(_epoch(second)) for _ in range(3)]
    for one, other in zip(a, b, strict=True):
        np.testing.assert_array_equal(one, other)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    assert not np.array_equal(a[0], np.arange(ROWS))
    np.testing.assert_array_equal(a[0], np.random.default_rng([3, 1]).permutation(ROWS))
    assert not np.array_equal(_rows(_epoch(batches(x, y, SIZE, seed=4))), a[0])


def test_without_a_seed_rows_come_in_order_every_epoch():
    x, y = _arrays()
    dataset = batches(x, y, SIZE)
    for _ in range(2):
        np.testing.assert_array_equal(_rows(_epoch(dataset)), np.arange(ROWS))


@pytest.mark.parametrize("rows", [SIZE * 3, SIZE // 2])
def test_whole_batches_only_or_one_partial_batch(rows):
    x = aligned_empty((rows, 2), np.float32)
    x[...] = np.arange(rows)[:, None]
    epoch = [(a.numpy(), b.numpy()) for a, b in batches(x, x[:, 0].copy(), SIZE, seed=1)]
    assert [len(b) for _, b in epoch] == ([SIZE] * 3 if rows == SIZE * 3 else [rows])
    assert sorted(np.concatenate([b for _, b in epoch])) == list(range(rows))


def test_the_arrays_are_read_in_place_not_copied():
    x, y = _arrays()
    dataset = batches(x, y, SIZE)
    x["code"][:] = -1  # written after the dataset was made: its batches see the change
    assert (_rows(_epoch(dataset)) == -1).all()


def test_inputs_in_a_list_come_as_a_tuple_and_without_labels_alone():
    x, _ = _arrays()
    pair = [x["numeric"], x["code"]]
    (numeric, code), labels = next(iter(batches(pair, x["code"].astype(np.float32), SIZE)))
    np.testing.assert_array_equal(code.numpy(), np.arange(SIZE))
    np.testing.assert_array_equal(numeric.numpy()[:, 0], np.arange(SIZE))
    np.testing.assert_array_equal(labels.numpy(), np.arange(SIZE))
    alone = next(iter(batches(x["numeric"], None, SIZE)))
    assert alone.shape == (SIZE, 3)
