"""Live metrics: the scorer's predictions joined with the labels that arrive later on flights.completed.

``label_predictions`` and ``metrics_by`` are pure (frames in, frames out) and serve any grouping: per model
version, per month, per day. ``read_topic`` loads a whole topic (read_committed, end offsets fixed at the
start) into a frame with each record's Kafka timestamp, partition and offset.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel

from ml.decode import ContractDecoder
from ml.evaluate import metrics
from ml.settings import LoopSettings
from ml.snapshot import partition_offsets, read_ranges, snapshot_consumer

log = logging.getLogger(__name__)

KAFKA_TS = "kafka_ts_ms"  # columns added by read_topic
PARTITION = "kafka_partition"
OFFSET = "kafka_offset"


def label_predictions(predictions: pd.DataFrame, completed: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per predicted flight that has a label: the prediction's columns plus ``delayed`` (bool) and
    ``month`` from flights.completed; and how many duplicate predictions were dropped.

    A flight scored twice (at-least-once delivery after a restart or rebalance) keeps its first prediction
    by ``scored_at``: that is the one a consumer acted on. Flights without a completed record yet (labels
    arrive late) are left out.
    """
    ordered = predictions.sort_values(["scored_at", "flight_id"], kind="stable")
    first = ordered.drop_duplicates("flight_id", keep="first")
    labels = completed[["flight_id", "delayed", "month"]].drop_duplicates("flight_id", keep="last")
    # The prediction's own ``delayed`` is the scorer's decision at its threshold; the label replaces it.
    joined = first.rename(columns={"delayed": "decision"}).drop(columns=["month"], errors="ignore").merge(
        labels, on="flight_id", how="inner", validate="one_to_one")
    return joined.reset_index(drop=True), len(predictions) - len(first)


def metrics_by(labelled: pd.DataFrame, keys: str | Sequence[str], probability: str = "probability"
               ) -> pd.DataFrame:
    """Per group of ``keys``: predictions, positive_rate, roc_auc, log_loss, brier, mean_prediction, and the
    first/last ``scored_at`` when present. AUC and log loss are NaN for a group holding one class only."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    rows = []
    for key, group in labelled.groupby(keys, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        y, p = group["delayed"].to_numpy(dtype="int64"), group[probability].to_numpy(dtype="float64")
        try:
            m = metrics(y, p)
        except ValueError:  # a single class: ranking metrics are undefined
            m = {"roc_auc": np.nan, "log_loss": np.nan, "brier": np.nan, "positive_rate": float(y.mean()),
                 "mean_prediction": float(p.mean()), "rows": len(y)}
        row.update(predictions=m.pop("rows"), **m)
        if "scored_at" in group:
            row.update(first_scored_at=group["scored_at"].min(), last_scored_at=group["scored_at"].max())
        rows.append(row)
    columns = [*keys, "predictions", "roc_auc", "log_loss", "brier", "positive_rate", "mean_prediction"]
    return pd.DataFrame(rows, columns=columns + (["first_scored_at", "last_scored_at"]
                                                 if "scored_at" in labelled else []))


def read_topic(settings: LoopSettings, topic: str, contract: type[BaseModel], timeout: float = 30.0
               ) -> pd.DataFrame:
    """Every record of ``topic`` up to its end offsets now (read_committed), decoded with ``contract``, plus
    the Kafka timestamp (ms), partition and offset of each. Records the contract refuses are logged and
    left out. Raises BrokerUnavailable or TopicMissing."""
    ranges = partition_offsets(settings, topic, timeout)
    decoder = ContractDecoder(contract)
    tables, refused = [], 0
    consumer = snapshot_consumer(settings)
    try:
        for batch in read_ranges(consumer, topic, ranges, timeout):
            decoded = decoder.decode(batch.values)
            refused += len(decoded.rejected)
            msgs = [batch.messages[i] for i in decoded.accepted]
            tables.append(decoded.table
                          .append_column(KAFKA_TS, pa.array([m.timestamp()[1] for m in msgs], pa.int64()))
                          .append_column(PARTITION, pa.array([m.partition() for m in msgs], pa.int32()))
                          .append_column(OFFSET, pa.array([m.offset() for m in msgs], pa.int64())))
    finally:
        consumer.close()
    if refused:
        log.warning("%s: %d records refused by the %s contract were left out", topic, refused, contract.__name__)
    if not tables:
        return contract_frame(decoder)
    frame = pa.concat_tables(tables).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    log.info("read %d records of %s (offsets %s)", len(frame), topic,
             {p: f"[{lo},{hi})" for p, (lo, hi) in sorted(ranges.items())})
    return frame


def contract_frame(decoder: ContractDecoder) -> pd.DataFrame:
    """An empty frame with the contract's columns and the Kafka position columns."""
    schema = decoder.schema.append(pa.field(KAFKA_TS, pa.int64())).append(pa.field(PARTITION, pa.int32())) \
        .append(pa.field(OFFSET, pa.int64()))
    return schema.empty_table().to_pandas()

