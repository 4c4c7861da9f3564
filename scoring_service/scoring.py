"""Score one batch of raw input records: decode against the use case's input contract, isolate dead
letters, turn the good rows into the model's inputs (the use case's one preprocessing path), run the model's
numpy pass, ask the use case for its output columns, and encode the outputs column-wise in Arrow; the (rare)
dead letters with orjson. With a shadow model, the same decoded rows are scored by it too, for the shadow topic;
whatever goes wrong with the shadow costs only the shadow's outputs of that batch.

Pure: no Kafka here; the app hands in the records' values and positions and produces what comes back.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa

from ml.decode import ERROR_SCHEMA, Decoded
from ml.json_columns import encode_records, json_column, literal
from ml.numpy_forward import NumpyForward
from ml.preprocessing import Preprocessing
from ml.use_cases import UseCase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputBatch:
    """Raw input records of one topic, column-wise: positions, keys and values (one Python object per
    batch rather than per record)."""

    topic: str
    partitions: np.ndarray  # int32
    offsets: np.ndarray  # int64
    keys: list[bytes | None]
    values: list[bytes | None]

    @classmethod
    def of(cls, topic: str, records: Sequence[tuple[int, int, bytes | None, bytes | None]]) -> InputBatch:
        """From (partition, offset, key, value) tuples."""
        return cls(topic, np.array([r[0] for r in records], np.int32), np.array([r[1] for r in records], np.int64),
                   [r[2] for r in records], [r[3] for r in records])

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class ServingModel:
    """One model version ready to score: swapped in as a whole, read once per batch."""

    name: str
    version: int
    preprocessing: Preprocessing  # the use case's, fitted with the model
    forward: NumpyForward
    artifact_sha256: str


class Decoder(Protocol):
    """What decodes a batch of input values (``ml.wire.TopicDecoder``; a ``ContractDecoder`` for bare JSON)."""

    def decode(self, values: list[bytes | None]) -> Decoded: ...


@dataclass(frozen=True)
class OutputFrames:
    """The frames (``ml.wire``: magic byte, schema id) put in front of prediction and dead-letter values."""

    predictions: bytes
    dead_letters: bytes
    shadow: bytes = b""  # the shadow predictions topic's


# Why a shadow model's outputs of a batch were skipped (the label of the scorer's shadow failures counter).
SHADOW_EXCEPTION = "exception"
SHADOW_NON_FINITE = "non_finite"
SHADOW_OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True)
class ShadowFailure:
    """The shadow model could not score a batch: ``reason`` (SHADOW_*) and what happened."""

    reason: str
    detail: str


@dataclass(frozen=True)
class ScoredBatch:
    """Output records (key, value) of one batch; every input is in exactly one of the two champion lists. The
    shadow's predictions are of the same rows as the champion's, or none when the shadow failed."""

    predictions: list[tuple[bytes, bytes]]
    dead_letters: list[tuple[bytes | None, bytes]]
    dead_letter_classes: list[str]
    shadow_predictions: list[tuple[bytes, bytes]] = field(default_factory=list)
    shadow_failure: ShadowFailure | None = None


class _ShadowUnfit(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        self.failure = ShadowFailure(reason, detail)
        super().__init__(detail)


def dead_letter(batch: InputBatch, i: int, error_class: str, reason: str, failed_at: str) -> bytes:
    """The dead-letter value of input ``i``, which could not be scored, carrying its original bytes."""
    return orjson.dumps({
        "schema_version": 1, "source_topic": batch.topic, "source_partition": int(batch.partitions[i]),
        "source_offset": int(batch.offsets[i]), "reason": reason, "error_class": error_class,
        "original_b64": base64.b64encode(batch.values[i] or b"").decode("ascii"), "failed_at": failed_at,
    })


def encode_outputs(use_case: UseCase, columns: dict[str, pa.Array | str], batch: InputBatch,
                   accepted: np.ndarray, model: ServingModel, stamp: str) -> list[bytes]:
    """Output values built column-wise in Arrow (no Python work per row): the use case's columns plus the
    model and source position of each row (the ``ScoredEvent`` fields)."""
    columns = {**columns, "schema_version": "1", "model_name": literal(model.name),
               "model_version": literal(model.version), "source_topic": literal(batch.topic),
               "source_partition": json_column(pa.array(batch.partitions[accepted])),
               "source_offset": json_column(pa.array(batch.offsets[accepted])), "scored_at": literal(stamp)}
    return encode_records(columns, list(use_case.prediction_contract.model_fields)).to_pylist()


def score_table(use_case: UseCase, model: ServingModel, table: pa.Table) -> dict[str, pa.Array | str]:
    """The use case's output columns for the rows of ``table``: its preprocessing, the model's numpy pass,
    its outputs. Raises ValueError when a row cannot be transformed."""
    inputs = use_case.transform(model.preprocessing, table)
    return use_case.predictions(model.preprocessing, inputs, model.forward(inputs), table)


def shadow_columns(use_case: UseCase, model: ServingModel, table: pa.Table) -> dict[str, pa.Array | str]:
    """``score_table`` for a shadow model, its raw outputs checked first: _ShadowUnfit when one is not finite or
    out of the use case's bounds (the champion's were checked by its canary; a shadow's are checked per batch,
    since nothing downstream judges them)."""
    inputs = use_case.transform(model.preprocessing, table)
    outputs = model.forward(inputs)
    bad = int(np.count_nonzero(~np.isfinite(outputs)))
    if bad:
        raise _ShadowUnfit(SHADOW_NON_FINITE, f"{bad} non-finite output(s)")
    bounds = use_case.output_bounds
    if bounds is not None and outputs.size and (outputs.min() < bounds[0] or outputs.max() > bounds[1]):
        raise _ShadowUnfit(SHADOW_OUT_OF_RANGE, f"outputs outside [{bounds[0]}, {bounds[1]}]: min {outputs.min()}, "
                                                f"max {outputs.max()}")
    return use_case.predictions(model.preprocessing, inputs, outputs, table)


def score_shadow(batch: InputBatch, table: pa.Table, accepted: np.ndarray, keys: list[bytes], model: ServingModel,
                 use_case: UseCase, frame: bytes, stamp: str) -> tuple[list[tuple[bytes, bytes]], ShadowFailure | None]:
    """The shadow model's framed prediction records of the rows the champion scored (``table``, input positions
    ``accepted``, keys ``keys``), or none and why: nothing the shadow does reaches the champion's outputs."""
    if not len(accepted):
        return [], None
    try:
        values = encode_outputs(use_case, shadow_columns(use_case, model, table), batch, accepted, model, stamp)
        return [(k, frame + v) for k, v in zip(keys, values, strict=True)], None
    except _ShadowUnfit as e:
        return [], e.failure
    except Exception as e:  # noqa: BLE001 - whatever the shadow raises, the champion's batch goes out
        return [], ShadowFailure(SHADOW_EXCEPTION, f"{type(e).__name__}: {str(e)[:300]}")


def score_batch(batch: InputBatch, model: ServingModel, use_case: UseCase, decoder: Decoder, frames: OutputFrames,
                now: datetime | None = None, shadow: ServingModel | None = None) -> ScoredBatch:
    """Outputs for the records that satisfy the input contract, dead letters for the others, each framed; with a
    ``shadow`` model, its outputs for the same rows (framed with ``frames.shadow``). The batch is decoded once;
    dead letters come from the champion's path only."""
    stamp = (now or datetime.now(UTC)).isoformat()
    decoded = decoder.decode(batch.values)
    dead = [(int(r.index), r.error_class, r.reason) for r in decoded.rejected]
    table, accepted = decoded.table, decoded.accepted

    def score(t: pa.Table) -> dict[str, pa.Array | str]:
        return score_table(use_case, model, t)

    try:
        columns = score(table)
    except ValueError as e:
        # The contract admits the batch, so this should not happen; isolate the culprits rather than stall.
        log.warning("scoring failed on a batch of %d (%s): finding the failing record(s)", len(accepted), e)
        keep = []
        for i in range(table.num_rows):
            try:
                score(table.slice(i, 1))
                keep.append(i)
            except ValueError as err:
                dead.append((int(accepted[i]), ERROR_SCHEMA, f"features: {err}"))
        table, accepted = table.take(pa.array(keep, pa.int64())), accepted[keep]
        columns = score(table)
    # A prediction is keyed like its input: by the contract's key field, else by the input record's key.
    key = use_case.input_contract.KEY
    keys = table.column(key).cast(pa.binary()).to_pylist() if key else [batch.keys[i] for i in accepted]
    values = encode_outputs(use_case, columns, batch, accepted, model, stamp) if len(accepted) else []
    head = frames.predictions
    dead.sort()
    shadow_out, failure = ([], None) if shadow is None else score_shadow(batch, table, accepted, keys, shadow,
                                                                         use_case, frames.shadow, stamp)
    return ScoredBatch(predictions=[(k, head + v) for k, v in zip(keys, values, strict=True)],
                       dead_letters=[(batch.keys[i], frames.dead_letters + dead_letter(batch, i, cls, reason, stamp))
                                     for i, cls, reason in dead],
                       dead_letter_classes=[cls for _, cls, _ in dead], shadow_predictions=shadow_out,
                       shadow_failure=failure)
