"""Benchmark: train on January-June 2013, evaluate on July; the last line printed is one JSON object.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.train_eval
"""

from __future__ import annotations

import json
import logging
import time

from ml.settings import LoopSettings
from use_cases.flight_delay import evaluation, training
from use_cases.flight_delay.source import load_completed


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.perf_counter()
    train_df, july = load_completed((1, 6)), load_completed((7, 7))
    load_s = time.perf_counter() - started
    result = training.train(train_df, LoopSettings(use_case="flight_delay"))
    started = time.perf_counter()
    p = evaluation.score(result.model, result.preprocessing, july)
    score_s = time.perf_counter() - started
    m = evaluation.metrics(july["delayed"].to_numpy(), p)
    print(json.dumps({
        "train_s": round(result.seconds, 1), "auc_july": round(m["roc_auc"], 4),
        "logloss_july": round(m["log_loss"], 4), "brier_july": round(m["brier"], 4),
        "rows_train": result.rows_train, "rows_val": result.rows_val, "rows_july": m["rows"],
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "load_s": round(load_s, 1), "score_s": round(score_s, 2), "preprocessing": result.preprocessing.fingerprint,
    }))


if __name__ == "__main__":
    main()
