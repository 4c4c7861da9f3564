"""Training inputs handed to TensorFlow without a copy: an aligned array is shared, any other is copied once into
an aligned one, so a kernel never reads a misaligned buffer (which aborts the process)."""

from __future__ import annotations

import numpy as np
import pytest

from ml.training import TENSOR_ALIGNMENT, aligned_empty, shared_tensor

tf = pytest.importorskip("tensorflow")


@pytest.mark.parametrize(("shape", "dtype"), [((1000, 37), "float32"), ((3,), "int32"), ((0, 5), "float32"),
                                              ((7, 3), "float64"), ((5,), "int8")])
def test_aligned_arrays_are_aligned_and_shared(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == np.dtype(dtype) and a.flags.c_contiguous
    assert a.size == 0 or a.ctypes.data % TENSOR_ALIGNMENT == 0  # an empty array has no buffer to align
    a[...] = np.arange(a.size).reshape(shape)
    t = shared_tensor(a)
    np.testing.assert_array_equal(t.numpy(), a)
    if a.size:
        a.flat[0] = 42  # one buffer: the tensor sees the write
        assert t.numpy().flat[0] == 42


def test_a_misaligned_or_strided_array_is_copied_and_safe_to_gather_from():
    buffer = aligned_empty((1001,), "float32")
    buffer[...] = np.arange(1001)
    misaligned = buffer[1:]  # 4 bytes past an aligned start
    assert misaligned.ctypes.data % TENSOR_ALIGNMENT
    t = shared_tensor(misaligned)
    misaligned[0] = -1.0  # a copy: the tensor keeps the values it was given
    assert t.numpy()[0] == 1.0
    np.testing.assert_array_equal(tf.gather(t, [0, 999]).numpy(), [1.0, 1000.0])
    strided = np.arange(24, dtype="int32").reshape(4, 6).T
    np.testing.assert_array_equal(shared_tensor(strided).numpy(), strided)
    frozen = aligned_empty((8,), "float32")
    frozen[...] = 2.0
    frozen.flags.writeable = False  # DLPack cannot export a read-only buffer: copied
    np.testing.assert_array_equal(shared_tensor(frozen).numpy(), frozen)


def test_a_shared_tensor_keeps_its_array_alive():
    a = aligned_empty((256, 16), "float32")
    a[...] = 3.0
    t = shared_tensor(a)
    del a
    np.testing.assert_array_equal(tf.reduce_sum(t).numpy(), 3.0 * 256 * 16)
