"""Benchmark: what one epoch of one flight-delay member costs, and what a change to how it runs would save.

Training a year of flights is most of a one-year retraining (docs/performance.md, ``scale.py``). This measures
one member (``model.build``) fitted as ``ml.training.fit`` fits it (its ops on the fit's own thread), on the model
inputs of every 2013 flight held in memory as training holds them, each variant in a fresh process (TensorFlow's
threading is set before it starts), the variants alternated over ``--repeats`` rounds:

- ``one_core``: the process pinned to one CPU, as each of two members training side by side has about one;
- ``keras_arrays``: one CPU, the arrays given to Keras to batch and shuffle (a gather per batch in a parallel map
  stage), as training ran before ``ml.training.batches``;
- ``all_cores``: the process's CPUs (TensorFlow's inter-op pool runs independent ops of a step side by side);
  ``all_cores_keras_arrays`` the same with Keras' batching;
- ``two_members``: two members (seeds 7 and 8) fitted side by side on the process's CPUs, as training fits them
  (``ml.training.side_by_side``); ``two_members_keras_arrays`` the same with Keras' batching;
- ``interop_1``: one CPU and ``TF_NUM_INTEROP_THREADS=1``;
- ``no_metric``: one CPU, compiled without the AUC metric (metrics do not change the weights);
- ``prebatched``: one CPU, the batches made once and cached in a ``tf.data`` dataset, not shuffled: the share of
  Keras' per-epoch shuffle and gather;
- ``xla``: one CPU, compiled with ``jit_compile=True`` (XLA), one epoch after the first only (it is slow).

For each: ``first_s`` (the first epoch, tracing included), ``epoch_s`` (the mean wall of the epochs after it) and
``epoch_cpu_s`` (their process CPU per epoch; of both members for ``two_members``), the median over the rounds.
The last stdout line is one JSON object: ``rows``, ``batch_size``, ``epochs`` and ``variants``.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.member_epoch [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import orjson

VARIANTS = ("one_core", "keras_arrays", "all_cores", "all_cores_keras_arrays", "two_members",
            "two_members_keras_arrays", "interop_1", "no_metric", "prebatched", "xla")
ALL_CORES = frozenset({"all_cores", "all_cores_keras_arrays", "two_members", "two_members_keras_arrays"})
ONE_CORE = frozenset(VARIANTS) - ALL_CORES


def measure(variant: str, epochs: int) -> dict[str, float]:
    """Fit one member in this process as ``variant`` says; its timings."""
    import keras
    import numpy as np
    import tensorflow as tf

    from ml.training import _shared, batches, ops_on_their_callers_thread, side_by_side
    from use_cases.flight_delay import model as model_lib
    from use_cases.flight_delay import preprocessing as prep
    from use_cases.flight_delay import training
    from use_cases.flight_delay.source import load_completed

    ops_on_their_callers_thread()
    table = prep.input_table(load_completed((1, 12)), carry=(training.LABEL,))
    label = prep.labels(table)
    rows = np.arange(len(table))
    fitted = prep.fit(table, rows, y=label)
    x, y = training._data(fitted, table, label.astype("float32"), rows, streamed=False)
    members = 2 if variant.startswith("two_members") else 1
    models = []
    for seed in range(7, 7 + members):
        keras.utils.set_random_seed(seed)
        models.append(model_lib.build(fitted))
    model = models[0]
    if variant in ("no_metric", "xla"):
        model_lib._compile(model, model_lib.STEPS_PER_EXECUTION, auc=variant != "no_metric",
                           jit_compile=True if variant == "xla" else "auto")
    if variant == "prebatched":
        data = [{"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(training.BATCH_SIZE).cache()}]
    elif variant.endswith("keras_arrays"):
        data = [{"x": _shared(x), "y": _shared(y), "batch_size": training.BATCH_SIZE, "shuffle": True}] * members
    else:  # as ml.training.fit gives them
        data = [{"x": batches(x, y, training.BATCH_SIZE, seed=seed), "shuffle": False}
                for seed in range(7, 7 + members)]

    def fit_all(n: int) -> None:
        side_by_side([lambda m=m, d=d: m.fit(**d, epochs=n, verbose=0) for m, d in zip(models, data, strict=True)])

    started = time.perf_counter()
    fit_all(1)
    first = time.perf_counter() - started
    epochs = 1 if variant == "xla" else epochs
    cpu, started = time.process_time(), time.perf_counter()
    fit_all(epochs)
    return {"first_s": first, "epoch_s": (time.perf_counter() - started) / epochs,
            "epoch_cpu_s": (time.process_time() - cpu) / epochs, "rows": len(rows), "batch_size": training.BATCH_SIZE}


def run(variant: str, epochs: int) -> dict[str, float]:
    """``measure`` in a fresh process (pinned to one CPU for the one-core variants)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if variant == "interop_1":
        env["TF_NUM_INTEROP_THREADS"] = "1"
    cpus = sorted(os.sched_getaffinity(0))
    pin = ["taskset", "-c", str(cpus[0])] if variant in ONE_CORE else []
    out = subprocess.run([*pin, sys.executable, "-m", "benchmarks.member_epoch", "--measure", variant,
                          "--epochs", str(epochs)], env=env, check=True, capture_output=True, text=True)
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed after the first (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every variant (default 2)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(orjson.dumps(measure(args.measure, args.epochs)).decode())
        return
    variants = args.variants.split(",")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            runs[variant].append(run(variant, args.epochs))
            print(variant, runs[variant][-1], file=sys.stderr, flush=True)
    summary = {v: {k: round(statistics.median(r[k] for r in rs), 2) for k in ("first_s", "epoch_s", "epoch_cpu_s")}
               for v, rs in runs.items()}
    first = next(iter(runs.values()))[0]
    print(orjson.dumps({"rows": first["rows"], "batch_size": first["batch_size"], "epochs": args.epochs,
                        "variants": summary}).decode())


if __name__ == "__main__":
    main()
