"""Score one batch of raw input records: decode against the contract, isolate dead letters, transform the
good rows through ``ml.features.transform`` in one call, run the model once, encode the predictions
column-wise in Arrow and the (rare) dead letters with orjson.

Pure: no Kafka here; the app hands in the records' values and positions and produces what comes back.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa

from ml import contracts, features
from ml.decode import ERROR_SCHEMA, ContractDecoder
from ml.replay import encode_records, json_column
from scoring_service.inference import NumpyForward

log = logging.getLogger(__name__)

PREDICTION_FIELDS = list(contracts.Prediction.model_fields)


@dataclass(frozen=True)
class InputRecord:
    """Where an input record came from, and its raw key and value."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class ServingModel:
    """One model version ready to score: swapped in as a whole, read once per batch."""

    name: str
    version: int
    contract: features.FeatureContract
    forward: NumpyForward
    artifact_sha256: str


@dataclass(frozen=True)
class ScoredBatch:
    """Output records (key, value) of one batch; every input is in exactly one of the two lists."""

    predictions: list[tuple[bytes, bytes]]
    dead_letters: list[tuple[bytes | None, bytes]]
    dead_letter_classes: list[str]


def dead_letter(record: InputRecord, error_class: str, reason: str, failed_at: str) -> bytes:
    """The `flights.dlq` value of a record that could not be scored, carrying its original bytes."""
    return orjson.dumps({
        "schema_version": 1, "source_topic": record.topic, "source_partition": record.partition,
        "source_offset": record.offset, "reason": reason, "error_class": error_class,
        "original_b64": base64.b64encode(record.value or b"").decode("ascii"), "failed_at": failed_at,
    })


def _probabilities(model: ServingModel, rows) -> np.ndarray:
    return model.forward(features.transform(model.contract, rows))


def _literal(value: object) -> str:
    return orjson.dumps(value).decode()


def encode_predictions(table: pa.Table, accepted: Sequence[InputRecord], p: np.ndarray, model: ServingModel,
                       threshold: float, stamp: str) -> list[bytes]:
    """`flights.predictions` values, built column-wise in Arrow (no Python work per row): the constant
    fields are JSON literals, the others ``ml.replay.json_column`` encodings."""
    columns = {
        "schema_version": "1", "flight_id": json_column(table.column("flight_id").combine_chunks()),
        "probability": json_column(pa.array(p)), "delayed": json_column(pa.array(p >= threshold)),
        "threshold": _literal(threshold), "model_name": _literal(model.name),
        "model_version": _literal(model.version), "source_topic": _literal(accepted[0].topic if accepted else ""),
        "source_partition": json_column(pa.array([r.partition for r in accepted], pa.int32())),
        "source_offset": json_column(pa.array([r.offset for r in accepted], pa.int64())),
        "scored_at": _literal(stamp),
    }
    return encode_records(columns, PREDICTION_FIELDS).to_pylist()


def score_batch(records: Sequence[InputRecord], model: ServingModel, threshold: float,
                decoder: ContractDecoder, now: datetime | None = None) -> ScoredBatch:
    """Predictions for the records that satisfy FlightScheduled, dead letters for the others.

    All records must come from one topic (the scorer consumes one).
    """
    stamp = (now or datetime.now(UTC)).isoformat()
    decoded = decoder.decode([r.value for r in records])
    dead = [(records[r.index], r.error_class, r.reason) for r in decoded.rejected]
    accepted = [records[i] for i in decoded.accepted]
    table = decoded.table
    try:
        p = _probabilities(model, table)
    except ValueError as e:
        # The contract admits the batch, so this should not happen; isolate the culprit rather than stall.
        log.warning("feature transform failed on a batch of %d (%s): scoring record by record", len(accepted), e)
        keep, p_parts = [], []
        for i, record in enumerate(accepted):
            try:
                p_parts.append(_probabilities(model, table.slice(i, 1)))
                keep.append(i)
            except ValueError as err:
                dead.append((record, ERROR_SCHEMA, f"features: {err}"))
        table, accepted = table.take(pa.array(keep, pa.int64())), [accepted[i] for i in keep]
        p = np.concatenate(p_parts) if p_parts else np.empty(0, np.float32)
    keys = table.column("flight_id").cast(pa.binary()).to_pylist()
    values = encode_predictions(table, accepted, p, model, threshold, stamp)
    dead.sort(key=lambda d: (d[0].partition, d[0].offset))
    return ScoredBatch(predictions=list(zip(keys, values, strict=True)),
                       dead_letters=[(r.key, dead_letter(r, cls, reason, stamp)) for r, cls, reason in dead],
                       dead_letter_classes=[cls for _, cls, _ in dead])
