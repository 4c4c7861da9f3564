"""Benchmark of the retraining core on a whole year of flights; the last stdout line is one JSON object.

1. Replay 2013 into Kafka as fast as possible (``replay_eps``).
2. One full retraining in this process, from snapshot start to the model on the topic (``total_s``):
   snapshot of the whole year (``snapshot_eps``), GX validation (``validate_s``), training (``train_s``),
   evaluation, registration, publishing.
3. From the same snapshot read back from Parquet: a model trained on January-June and scored on July
   (``auc_july``, ``train_jan_jun_s``).

Uses $KAFKA_BOOTSTRAP_SERVERS if set, otherwise starts a local broker; MLflow on SQLite in a temporary folder.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/pipeline.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.replay_snapshot import bench_settings, kafka_cluster  # noqa: E402
from ml import pipeline, snapshot  # noqa: E402
from ml.topics import ensure_topics  # noqa: E402
from use_cases.flight_delay import evaluation, training  # noqa: E402
from use_cases.flight_delay.contracts import FlightCompleted  # noqa: E402
from use_cases.flight_delay.replay import replay_frame  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402
from use_cases.flight_delay.use_case import FlightDelay  # noqa: E402


def run(bootstrap: str, data_dir: Path) -> dict:
    settings = bench_settings(bootstrap, data_dir).model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{data_dir / 'mlflow.db'}",
        "mlflow_artifact_root": data_dir / "artifacts",
    })
    ensure_topics(settings, [FlightDelay()])
    summary = replay_frame(settings, load_completed((1, 12)))

    t0 = time.perf_counter()
    outcome = pipeline.retrain(settings, "bench-year")
    total_s = time.perf_counter() - t0
    if outcome.status != "published":
        raise SystemExit(f"retraining did not publish: {outcome.status}: {outcome.reason}")
    completed = settings.topic("flights.completed")
    (manifest,) = snapshot.list_manifests(settings, completed)

    year, _ = snapshot.load_snapshots(settings, completed, FlightCompleted, [manifest.snapshot_id])
    jan_jun, july = year[year["month"] <= 6], year[year["month"] == 7]
    result = training.train(jan_jun, settings)
    july_metrics = evaluation.metrics(july["delayed"].to_numpy(dtype=bool),
                                      evaluation.score(result.model, result.preprocessing, july))
    return {
        "replay_eps": round(summary.events_per_s),
        "snapshot_eps": round(manifest.row_count / manifest.read_seconds),
        "validate_s": outcome.seconds["validate"],
        "train_s": outcome.seconds["train"],
        "auc_july": round(july_metrics["roc_auc"], 4),
        "logloss_july": round(july_metrics["log_loss"], 4),
        "train_jan_jun_s": round(result.seconds, 1),
        "total_s": round(total_s, 1),
        "steps_s": outcome.seconds,
        "events": summary.events,
        "snapshot_rows": manifest.row_count,
        "model_version": outcome.model_version,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    with kafka_cluster() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        print(orjson.dumps(run(bootstrap, Path(tmp))).decode())


if __name__ == "__main__":
    main()
