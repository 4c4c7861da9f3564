"""Benchmark: train on January-June 2013, evaluate on July; the last line printed is one JSON object.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.train_eval
"""

from __future__ import annotations

import json
import logging
import time

from ml import evaluate, train
from ml.flights_source import load_completed
from ml.settings import LoopSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.perf_counter()
    train_df, july = load_completed((1, 6)), load_completed((7, 7))
    load_s = time.perf_counter() - started
    result = train.train(train_df, LoopSettings())
    started = time.perf_counter()
    p = evaluate.score(result.model, result.contract, july)
    score_s = time.perf_counter() - started
    m = evaluate.metrics(july["delayed"].to_numpy(), p)
    print(json.dumps({
        "train_s": round(result.seconds, 1), "auc_july": round(m["roc_auc"], 4),
        "logloss_july": round(m["log_loss"], 4), "brier_july": round(m["brier"], 4),
        "rows_train": result.rows_train, "rows_val": result.rows_val, "rows_july": m["rows"],
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "load_s": round(load_s, 1), "score_s": round(score_s, 2), "contract": result.contract.fingerprint,
    }))


if __name__ == "__main__":
    main()
