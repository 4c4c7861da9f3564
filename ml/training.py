"""What training returns, and the seeded Keras fit with early stopping that the use cases share."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ml.preprocessing import Preprocessing

if TYPE_CHECKING:
    import keras

PATIENCE = 3
# Taken, never released, by the fit that says ops run on TensorFlow's intra-op pool rather than on their fit's thread:
# fits starting side by side say it once.
_POOL_LOGGED = threading.Lock()
# Held by a fit from setting the global seed until Keras starts training (the model's weights and dropout draw their
# seeds from it while the model and the fit are made): fits on other threads see only their own seed.
_SEEDING = threading.Lock()

T = TypeVar("T")
log = logging.getLogger(__name__)


class _SeedingTurn:
    """One fit's hold of ``_SEEDING``, taken when made and given back once: when Keras has made the fit's data
    pipeline (``on_train_begin``), or when the fit fails before."""

    def __init__(self) -> None:
        _SEEDING.acquire()
        self._held = True

    def release(self, _logs: Any = None) -> None:
        if self._held:
            self._held = False
            _SEEDING.release()


@dataclass(frozen=True)
class TrainResult:
    """A trained candidate: the model, the fitted preprocessing it reads, and how training went.

    ``history`` is the Keras history of the fit with early stopping (``val_*`` entries on its validation rows);
    ``best_epoch`` the epoch whose weights were kept (or refitted for).
    """

    model: keras.Model
    preprocessing: Preprocessing
    history: dict[str, list[float]]
    rows_train: int
    rows_val: int
    epochs_run: int
    best_epoch: int
    seconds: float


# TensorFlow's kernels require a tensor's buffer at this alignment (a misaligned one aborts the process).
TENSOR_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array whose buffer ``shared_tensor`` can hand to TensorFlow as it is."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + TENSOR_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def shared_tensor(array: np.ndarray) -> Any:
    """``array`` as a TensorFlow tensor over the same memory (DLPack), which keeps the array alive; an array that
    is read-only (DLPack cannot say so), not contiguous or not aligned for TensorFlow (``aligned_empty``) is copied
    into one that is first. Keras copies an array given to ``fit`` into a tensor for as long as the fit lasts, so
    inputs held as arrays take twice their size while a model trains; given as shared tensors, once."""
    import tensorflow as tf

    if not (array.flags.c_contiguous and array.flags.writeable) or (
            array.size and array.ctypes.data % TENSOR_ALIGNMENT):
        aligned = aligned_empty(array.shape, array.dtype)
        aligned[...] = array
        array = aligned
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _shared(data: Any) -> Any:
    """``data`` with every array in it (alone, or in a dict, list or tuple) as a ``shared_tensor`` (an array-like
    other than a numpy array, such as a pandas Series, converted first), and its lists as tuples, as Keras reads
    them (``tf.data`` would stack a list into one tensor)."""
    if isinstance(data, dict):
        return {key: _shared(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return tuple(_shared(value) for value in data)
    return shared_tensor(np.asarray(data))


# Rows gathered from the inputs this many batches at a time: one gather per input array per chunk, where Keras'
# own batching of arrays gathers each batch in a parallel map stage (a little less CPU an epoch; docs/performance.md).
GATHER_BATCHES = 16


def batches(x: Any, y: Any, batch_size: int, seed: int | None = None) -> Any:
    """A ``tf.data`` dataset of (x, y) batches of ``batch_size`` rows (x alone if ``y`` is None), read in place from
    the arrays in ``x`` and ``y`` (alone, or in a dict, list or tuple; as ``shared_tensor``s). With ``seed``, each
    pass over the dataset (an epoch of ``fit``) visits the rows in a new permutation drawn from ``(seed, pass)``, so
    a seed gives the same batches whatever else runs; without, in order (validation). Only ``GATHER_BATCHES``
    batches are gathered at a time, so the inputs are never copied whole."""
    import tensorflow as tf

    data = _shared(x) if y is None else _shared((x, y))  # no labels: a model that computes its own loss
    rows = int(tf.nest.flatten(data)[0].shape[0])
    whole = rows // batch_size
    passes = itertools.count(1)

    def permutation() -> np.ndarray:
        return np.random.default_rng([seed, next(passes)]).permutation(rows)

    def order(_: Any) -> Any:
        if seed is None:
            return tf.range(rows, dtype=tf.int64)
        drawn = tf.py_function(permutation, [], tf.int64)
        drawn.set_shape([rows])
        return drawn

    def gather(at: Any) -> Any:  # [batches, batch_size] positions, or the last partial batch's
        return tf.nest.map_structure(lambda values: tf.gather(values, at), data)

    def cut(at: Any) -> Any:
        out = tf.data.Dataset.from_tensor_slices(tf.reshape(at[:whole * batch_size], [whole, batch_size])) \
            .batch(GATHER_BATCHES).map(gather).unbatch()
        if rows % batch_size:
            out = out.concatenate(tf.data.Dataset.from_tensors(at[whole * batch_size:]).map(gather))
        return out

    options = tf.data.Options()
    # As Keras batches arrays: no graph rewrites, which serialise the pipeline for nothing here.
    options.experimental_optimization.apply_default_optimizations = False
    # No autotuning: with it, each epoch of a fit after the first began with a second's stall where Keras drops the
    # last epoch's iterator (about half of an epoch of a year of flights; docs/performance.md).
    options.autotune.enabled = False
    dataset = tf.data.Dataset.range(1).map(order).flat_map(cut).with_options(options)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-rows // batch_size)))
    return dataset.prefetch(2)


def ops_on_their_callers_thread() -> bool:
    """Have TensorFlow run each op on the thread that calls it (no intra-op pool), unless the environment sets
    ``TF_NUM_INTRAOP_THREADS``; False when TensorFlow already runs in this process (the pool is fixed then).

    The pool split a small network's ops across every core: fits side by side contended for the cores the
    other was using, and took longer (docs/performance.md). Without it, an op's arithmetic no longer depends on
    the machine's number of cores, so a seed trains the same model on any of them.
    """
    import tensorflow as tf

    if "TF_NUM_INTRAOP_THREADS" in os.environ:
        return False
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow has started: its pool stays as it is
        return tf.config.threading.get_intra_op_parallelism_threads() == 1
    return True


def _say_ops_share_a_pool() -> None:
    """Log once per process that fits run their ops on TensorFlow's intra-op pool, not on their own threads."""
    import tensorflow as tf

    threads = os.environ.get("TF_NUM_INTRAOP_THREADS") or tf.config.threading.get_intra_op_parallelism_threads()
    if str(threads) == "1":  # one thread: each op runs on its caller's
        return
    if not _POOL_LOGGED.acquire(blocking=False):  # said already
        return
    threads = threads or "one per core"
    why = "TF_NUM_INTRAOP_THREADS is set" if "TF_NUM_INTRAOP_THREADS" in os.environ else \
        "TensorFlow ran in this process before its first fit"
    log.warning("fits run each op on TensorFlow's intra-op pool (%s threads; %s): a seed may train another model "
                "here than on another number of cores, and fits side by side contend for the cores", threads, why)


def fit(build: Callable[[], keras.Model], x: Any, y: Any, *, seed: int, epochs: int, batch_size: int,
        validation: tuple[Any, Any] | None = None, patience: int = PATIENCE
        ) -> tuple[keras.Model, dict[str, list[float]], int]:
    """Build a model from ``seed`` and fit it; returns the model, its history and the best epoch.

    ``x`` and ``y`` are arrays (or dicts of them), cut into ``batch_size`` batches in a new order each epoch drawn
    from ``seed`` (``batches``), read in place as ``shared_tensor``s (fill large ones into ``aligned_empty``
    arrays); or ``x`` is a ``keras.utils.PyDataset`` of (inputs, labels) batches that orders its own rows each epoch
    and ``y`` is None (``batch_size`` unused): a training set too large to hold as model inputs is streamed.
    ``validation`` is an (x, y) pair of either kind. With ``validation``, training stops once the validation loss
    has not improved for ``patience`` epochs and the best epoch's weights are restored; without, it runs ``epochs``
    epochs (the last is the best). Raises ValueError on a dataset given with labels. Safe to call from several
    threads at once (``side_by_side``). Each TensorFlow op runs on the fit's own thread
    (``ops_on_their_callers_thread``; a warning, once per process, says when it cannot).
    """
    import keras

    if not ops_on_their_callers_thread():  # before the first tensor: the process's first fit starts TensorFlow
        _say_ops_share_a_pool()
    if isinstance(x, keras.utils.PyDataset):
        if y is not None:
            raise ValueError("a PyDataset yields its own labels: y must be None")
        data = x
    else:
        data = batches(x, y, batch_size, seed)
    if validation is not None and not isinstance(validation[0], keras.utils.PyDataset):
        validation = batches(*validation, batch_size)
    turn = _SeedingTurn()
    try:
        keras.utils.set_random_seed(seed)
        model = build()
        # Keras makes the training data's pipeline before it starts the callbacks.
        callbacks = [keras.callbacks.LambdaCallback(on_train_begin=turn.release)]
        if validation is not None:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                           restore_best_weights=True))
        # Not shuffle=True: Keras would reorder the batches of a dataset that orders its own rows.
        fitted = model.fit(data, epochs=epochs, verbose=0, shuffle=False, validation_data=validation,
                           callbacks=callbacks)
    finally:
        turn.release()
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    best = int(np.argmin(history["val_loss"])) + 1 if validation is not None else len(history["loss"])
    return model, history, best


def side_by_side(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Each of ``calls`` on a thread of its own, at most one per CPU at a time; their results in order (the first
    error in order is raised once all have ended). For independent ``fit``s: a small network's fit keeps about one
    core busy, so fits side by side use every core, and each trains the model it would train alone (the seed is
    set and used under a lock)."""
    if len(calls) <= 1:
        return [call() for call in calls]
    usable = len(os.sched_getaffinity(0))  # the CPUs this process may use (a container's cpuset), not the host's
    with ThreadPoolExecutor(max_workers=min(len(calls), usable), thread_name_prefix="fit") as pool:
        futures = [pool.submit(call) for call in calls]
    return [future.result() for future in futures]
