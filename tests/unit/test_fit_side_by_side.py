"""ml.training.side_by_side: independent fits on threads train the models they would train one after another."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ml.training import fit, side_by_side


def test_calls_run_at_once_and_results_keep_their_order():
    both = threading.Barrier(2, timeout=30)  # broken (an error) unless the two calls run at the same time

    def call(value):
        both.wait()
        return value

    assert side_by_side([lambda: call("a"), lambda: call("b")]) == ["a", "b"]
    assert side_by_side([lambda: 1]) == [1]
    assert side_by_side([]) == []


def test_the_first_error_in_order_is_raised_after_every_call_ended():
    ended = []

    def fails(message, wait):
        if wait:
            threading.Event().wait(0.2)
        ended.append(message)
        raise ValueError(message)

    with pytest.raises(ValueError, match="first"):
        side_by_side([lambda: fails("first", True), lambda: fails("second", False)])
    assert sorted(ended) == ["first", "second"]


def _build():
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.3),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", steps_per_execution=4)
    return model


def test_fits_side_by_side_equal_fits_one_after_another():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3_000, 6)).astype("float32")
    y = (x[:, 0] + rng.normal(scale=0.5, size=3_000) > 0).astype("float32")
    val = (x[:500], y[:500])

    def one(seed):  # dropout, Keras' shuffle and early stopping each depend on the seed
        model, history, best = fit(_build, x[500:], y[500:], seed=seed, epochs=4, batch_size=64, validation=val)
        return [w.copy() for w in model.get_weights()], history, best

    alone = [one(seed) for seed in (1, 2)]
    together = side_by_side([lambda: one(1), lambda: one(2)])
    for (weights_a, history_a, best_a), (weights_t, history_t, best_t) in zip(alone, together, strict=True):
        assert best_a == best_t and history_a == history_t
        for a, t in zip(weights_a, weights_t, strict=True):
            np.testing.assert_array_equal(a, t)
    assert not all(np.array_equal(a, b) for a, b in zip(alone[0][0], alone[1][0], strict=True))


_TRAIN_A_MONTH = """
import hashlib, os
from ml.settings import LoopSettings
from use_cases.flight_delay import training
from use_cases.flight_delay.source import load_completed
result = training.train(load_completed((1, 1), limit=12_000),
                        LoopSettings(use_case="flight_delay", epochs=1, min_training_rows=1_000))
weights = b"".join(w.tobytes() for w in result.model.get_weights())
print(len(os.sched_getaffinity(0)), hashlib.sha256(weights).hexdigest())
"""


def _python(code: str, env: dict[str, str] | None = None, cpus: set[int] | None = None) -> list[str]:
    """The words ``code`` prints in a fresh process (on ``cpus`` only, if given), ``TF_NUM_INTRAOP_THREADS`` unset
    unless ``env`` sets it."""
    clean = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**clean, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
                          preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
                          check=True).stdout.split()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to pin processes to")
def test_a_seed_trains_the_same_model_on_one_core_or_two():
    """TensorFlow's intra-op pool (one thread per core) splits an op's arithmetic by the number of cores: the
    same seed trained another model on two cores than on one. A fit runs each op on its caller's thread."""
    first, second = sorted(os.sched_getaffinity(0))[:2]
    one, two = _python(_TRAIN_A_MONTH, cpus={first}), _python(_TRAIN_A_MONTH, cpus={first, second})
    assert (one[0], two[0]) == ("1", "2")
    assert one[1] == two[1]


_FIT_AFTER = """
import logging, sys
import numpy as np
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s %(message)s")
if sys.argv[1] == "ops first":
    import tensorflow as tf
    tf.constant(1.0) + 1.0  # TensorFlow starts here, with its intra-op pool
from tests.unit.test_fit_side_by_side import _build
from ml.training import fit
x = np.ones((64, 6), dtype="float32")
for seed in (1, 2):
    fit(_build, x, x[:, 0], seed=seed, epochs=1, batch_size=32)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("before", "said"), [("ops first", 1), ("fit first", 0)])
def test_a_process_whose_fits_cannot_run_ops_on_their_thread_says_so_once(before, said):
    clean = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    out = subprocess.run([sys.executable, "-c", _FIT_AFTER, before], capture_output=True, text=True, timeout=300,
                         env={**clean, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=Path(__file__).resolve().parents[2],
                         check=True).stdout
    assert out.count("ml.training fits run each op on TensorFlow's intra-op pool") == said, out
    if said:
        assert "TensorFlow ran in this process before its first fit" in out


@pytest.mark.slow
def test_a_fresh_process_fits_with_ops_on_their_callers_thread_unless_the_environment_says():
    probe = ("import tensorflow as tf; from ml.training import ops_on_their_callers_thread as f; "
             "print(f(), tf.config.threading.get_intra_op_parallelism_threads())")
    assert _python(probe) == ["True", "1"]
    assert _python(probe, {"TF_NUM_INTRAOP_THREADS": "2"}) == ["False", "0"]  # the user's setting stands
