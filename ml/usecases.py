"""The use cases the loop retrains: what differs between them, behind one interface the pipeline calls.

A use case names its training topic (labelled events, snapshotted), the topics its scorer reads and writes,
the contract and data-quality suite of its snapshots, how the most recent rows are held out, how a
candidate is trained, how a feature contract is read back, and how challenger and champion are judged.
Everything else (snapshot, MLflow lineage, registry, signed envelope, rollout) is the same code for all.

    uc = usecases.get(settings.use_case)
    earlier, holdout = uc.holdout_slice(df, settings.holdout_days)
    result = uc.train(earlier, settings)          # .model, .contract (.to_dict(), .fingerprint), ...
    decision = uc.evaluate(challenger, uc.load_contract(d), champion, ..., holdout, settings)

Modules are imported when a hook is called (TensorFlow and Great Expectations take seconds to import).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
from pydantic import BaseModel

from ml import contracts
from ml.sensors.contracts import SensorReading, SensorScore
from ml.settings import LoopSettings

if TYPE_CHECKING:
    import keras

    from ml.evaluate import DecisionRecord
    from ml.validate import Suite


class FeatureContractLike(Protocol):
    """What the pipeline needs of a use case's feature contract (stored with the model and in the envelope)."""

    @property
    def fingerprint(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class TrainResultLike(Protocol):
    """What the pipeline logs of a training result."""

    model: keras.Model
    contract: FeatureContractLike
    history: dict[str, list[float]]
    best_epoch: int
    seconds: float


@dataclass(frozen=True)
class UseCase:
    """One use case of the loop. ``name`` is also the default registered model name (``LoopSettings``)."""

    name: str
    # LoopSettings fields naming the topics: snapshotted for training / read by the scorer / written by it.
    training_topic_setting: str
    input_topic_setting: str
    output_topic_setting: str
    dlq_topic_setting: str
    contract: type[BaseModel]  # the training topic's event contract (``ml.decode.ContractDecoder`` reads it)
    prediction_contract: type[BaseModel]  # what the scorer writes to the output topic
    event_time: str  # the contract field that is the Kafka timestamp and orders the holdout
    label: str
    suite: Callable[[], Suite]  # the data-quality suite of a training snapshot
    holdout_slice: Callable[[pd.DataFrame, float], tuple[pd.DataFrame, pd.DataFrame]]  # (df, days)
    train: Callable[[pd.DataFrame, LoopSettings], TrainResultLike]
    load_contract: Callable[[Mapping[str, Any]], FeatureContractLike]
    # (challenger, its contract, champion or None, its contract or None, holdout, settings, force_reason=)
    evaluate: Callable[..., DecisionRecord]

    def training_topic(self, settings: LoopSettings) -> str:
        return getattr(settings, self.training_topic_setting)

    def input_topic(self, settings: LoopSettings) -> str:
        return getattr(settings, self.input_topic_setting)

    def output_topic(self, settings: LoopSettings) -> str:
        return getattr(settings, self.output_topic_setting)

    def dlq_topic(self, settings: LoopSettings) -> str:
        return getattr(settings, self.dlq_topic_setting)


# ---------------------------------------------------------------- flight delay: the existing modules


def _flight_suite() -> Suite:
    from ml.validate import FLIGHTS

    return FLIGHTS


def _flight_holdout(df: pd.DataFrame, days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ml import evaluate

    return evaluate.holdout_slice(df, days=days)


def _flight_train(df: pd.DataFrame, settings: LoopSettings) -> TrainResultLike:
    from ml import train

    return train.train(df, settings)


def _flight_contract(data: Mapping[str, Any]) -> FeatureContractLike:
    from ml import features

    return features.FeatureContract.from_dict(data)


def _flight_evaluate(*args: Any, **kwargs: Any) -> DecisionRecord:
    from ml import evaluate

    return evaluate.evaluate_candidates(*args, **kwargs)


FLIGHT_DELAY = UseCase(
    name="flight_delay", training_topic_setting="topic_flights_completed",
    input_topic_setting="topic_flights_scheduled", output_topic_setting="topic_flights_predictions",
    dlq_topic_setting="topic_flights_dlq", contract=contracts.FlightCompleted,
    prediction_contract=contracts.Prediction, event_time="arr_utc", label="delayed", suite=_flight_suite,
    holdout_slice=_flight_holdout, train=_flight_train, load_contract=_flight_contract,
    evaluate=_flight_evaluate,
)


# ---------------------------------------------------------------- sensor anomaly: ml.sensors


def _sensor_suite() -> Suite:
    from ml.sensors.validation import SUITE

    return SUITE


def _sensor_holdout(df: pd.DataFrame, days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ml.sensors import evaluate

    return evaluate.holdout_slice(df, days=days)


def _sensor_train(df: pd.DataFrame, settings: LoopSettings) -> TrainResultLike:
    from ml.sensors import autoencoder

    return autoencoder.train(df, settings)


def _sensor_contract(data: Mapping[str, Any]) -> FeatureContractLike:
    from ml.sensors.features import SensorFeatureContract

    return SensorFeatureContract.from_dict(data)


def _sensor_evaluate(*args: Any, **kwargs: Any) -> DecisionRecord:
    from ml.sensors import evaluate

    return evaluate.evaluate_candidates(*args, **kwargs)


SENSOR_ANOMALY = UseCase(
    name="sensor_anomaly", training_topic_setting="topic_sensors_readings",
    input_topic_setting="topic_sensors_readings", output_topic_setting="topic_sensors_scores",
    dlq_topic_setting="topic_sensors_dlq", contract=SensorReading,
    prediction_contract=SensorScore, event_time="ts", label="is_anomaly", suite=_sensor_suite,
    holdout_slice=_sensor_holdout, train=_sensor_train, load_contract=_sensor_contract,
    evaluate=_sensor_evaluate,
)

USE_CASES: dict[str, UseCase] = {uc.name: uc for uc in (FLIGHT_DELAY, SENSOR_ANOMALY)}


def get(name: str) -> UseCase:
    """The use case called ``name``; ValueError naming the known ones otherwise."""
    try:
        return USE_CASES[name]
    except KeyError:
        raise ValueError(f"unknown use case {name!r}; known: {sorted(USE_CASES)}") from None


def for_contract(feature_contract: Mapping[str, Any]) -> UseCase:
    """The use case a feature contract (from MLflow or a model envelope) was fitted for.

    Flight contracts written before the ``use_case`` field existed name no use case: they are flights.
    """
    return get(feature_contract.get("use_case", FLIGHT_DELAY.name))
