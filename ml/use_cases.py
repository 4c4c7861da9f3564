"""A use case of the loop: the one interface through which every use-case fact reaches the loop, the scorer,
the DAGs and the UI, and the registry that finds use cases by name.

A use case is one package (in this repository or any other) holding a subclass of ``UseCase``: its topics and
their contracts, its label and time order, its fitted preprocessing, training, evaluation and gate criteria,
the scorer's output record and canary, the metrics its page shows. It is registered under the entry-point
group ``kafka_retrain_loop.use_cases`` of its distribution::

    [project.entry-points."kafka_retrain_loop.use_cases"]
    churn = "churn_model.use_case:Churn"

and found by that name (``USE_CASE=churn``): ``get(name)`` imports only the use case asked
for, when it is asked for. Snapshot, validation engine, gate engine, MLflow registry, signed publication,
hot swap and rollout are the same code for every use case.
"""

from __future__ import annotations

import functools
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml.bootstrap import Metric as MetricFunction
from ml.contracts import Contract, ScoredEvent
from ml.gate import Criterion, with_overrides
from ml.preprocessing import Preprocessing, schema_problems

if TYPE_CHECKING:
    import keras
    import pandas as pd
    import pyarrow as pa
    import typer

    from ml.numpy_forward import NumpyForward
    from ml.settings import LoopSettings, TopicNames
    from ml.snapshot import SnapshotRows
    from ml.training import TrainResult
    from ml.validation import Suite

ENTRY_POINT_GROUP = "kafka_retrain_loop.use_cases"
SHADOW_TOPIC_SUFFIX = ".shadow"


class UnknownUseCase(ValueError):
    """No use case of that name is registered (the message lists the registered ones)."""


@dataclass(frozen=True)
class UseCaseTopics:
    """A use case's topics by role (default names; the settings may prefix or rename them)."""

    input: str  # events the scorer scores
    labels: str  # events with their labels: snapshotted to train and judge models (may equal ``input``)
    predictions: str  # the scorer's output
    dlq: str  # inputs the scorer could not score, with the reason

    @property
    def shadow(self) -> str:
        """The shadow model's predictions (same contract as ``predictions``): ``<predictions>.shadow``."""
        return f"{self.predictions}{SHADOW_TOPIC_SUFFIX}"

    def resolved(self, names: TopicNames) -> UseCaseTopics:
        """The actual topic names under ``names``' prefix and renames (the shadow topic follows its predictions
        topic's actual name)."""
        return UseCaseTopics(*(names.topic(t) for t in (self.input, self.labels, self.predictions, self.dlq)))

    def distinct(self) -> list[str]:
        """Each topic once, in role order."""
        return list(dict.fromkeys((self.input, self.labels, self.predictions, self.shadow, self.dlq)))


@dataclass(frozen=True)
class LiveSpec:
    """How predictions meet their labels after the fact: the field both carry (``key``), the prediction's score
    and decision fields, and the live metric watched per version (``metric``, which way is better)."""

    key: str  # a field of ``prediction_contract`` and of ``label_contract``
    score: str  # the prediction's model output the metrics read (a probability, an anomaly score)
    decision: str  # the prediction's boolean decision at the model's threshold
    metric: str  # the live metric the monitor judges versions by (a key of ``live_metrics``)
    higher_is_better: bool = True


class UseCaseSettings(BaseSettings):
    """The knobs of one use case, read from ``<NAME>_*`` environment variables (``CHURN_GATE_MARGINS`` for the
    use case ``churn``); a use case extends it with its own. An empty variable counts as unset."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_ignore_empty=True, hide_input_in_errors=True)

    retrain_schedule: str = Field("@daily", description="Cron schedule of its retraining DAG ('none': off).")
    retrain_every_n: int = Field(0, ge=0, description="Retrain once this many records of the labels topic (all "
                                                      "partitions) are in no snapshot (0: off).")
    retrain_poll_interval_s: float = Field(5.0, gt=0, le=3600,
                                           description="How often the triggerer compares the labels topic's end "
                                                       "offsets with the last snapshot's.")
    gate_margins: dict[str, float] = Field(default_factory=dict,
                                           description="JSON: metric -> margin, replacing the gate's default.")
    gate_floors: dict[str, float] = Field(default_factory=dict,
                                          description="JSON: metric -> floor, replacing the gate's default.")


class UseCase(ABC):
    """One use case. Class attributes state its facts; methods do its own work. Instances are cheap (they read
    ``settings`` from the environment) and import nothing heavy: TensorFlow, scikit-learn and Great
    Expectations are imported inside the methods that need them."""

    name: ClassVar[str]  # registry name, default model name, DAG ``retrain_<name>``, env prefix ``<NAME>_``
    title: ClassVar[str]  # one line for the UI
    topics: ClassVar[UseCaseTopics]
    input_contract: ClassVar[type[Contract]]  # records of ``topics.input``
    label_contract: ClassVar[type[Contract]]  # records of ``topics.labels``
    prediction_contract: ClassVar[type[ScoredEvent]]  # records of ``topics.predictions``
    label: ClassVar[str]  # the field of ``label_contract`` a model learns; rows without it are not trained on
    time_order: ClassVar[tuple[str, ...]]  # columns that order labelled rows in time: a timestamp, tie-breakers
    gate: ClassVar[tuple[Criterion, ...]]  # default criteria of the promotion gate
    ui_metrics: ClassVar[tuple[str, ...]]  # evaluation metrics the loop's page shows per version
    preprocessing: ClassVar[type[Preprocessing]]
    output_bounds: ClassVar[tuple[float, float] | None] = None  # every model output lies within, if set
    live: ClassVar[LiveSpec | None] = None  # how the monitor joins predictions with labels (None: not monitored)
    Settings: ClassVar[type[UseCaseSettings]] = UseCaseSettings

    def __init__(self, settings: UseCaseSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings(_env_prefix=self.env_prefix())

    @classmethod
    def env_prefix(cls) -> str:
        return f"{cls.name.upper()}_"

    def __repr__(self) -> str:
        return f"<use case {self.name}>"

    # ------------------------------------------------------------ training side (the loop)

    @abstractmethod
    def validation_suite(self) -> Suite:
        """The data-quality suite of a snapshot of ``topics.labels`` (``ml.validation.Suite``)."""

    @abstractmethod
    def train(self, rows: pd.DataFrame, settings: LoopSettings) -> TrainResult:
        """Fit the preprocessing and train a model on labelled rows, given in no particular order (they are read
        from the snapshot files as they lie; ``ml.split.time_split`` orders them by ``time_order``); deterministic
        for ``settings.seed`` whatever their order. Raises ValueError when the rows cannot train a model."""

    def train_snapshot(self, rows: SnapshotRows, settings: LoopSettings) -> TrainResult:
        """``train`` on the training rows of snapshots, which the train step hands over unread (``SnapshotRows``:
        ``rows.count`` of them, in file order). By default they are read as one frame of every column; a use case
        overrides this to read only what its training needs (``rows.scan``: chosen columns a Parquet row group at a
        time, repetitive strings dictionary-encoded, and ``ml.row_scan`` to pick rows from such a pass; or
        ``rows.table``: them whole as Arrow), so a long history is never held as a frame."""
        return self.train(rows.columns(None), settings)

    @abstractmethod
    def evaluate(self, model: keras.Model | NumpyForward, preprocessing: Preprocessing, rows: pd.DataFrame, *,
                 scores: np.ndarray | None = None) -> dict[str, float]:
        """Metrics of ``model`` (read through its own ``preprocessing``) on labelled ``rows``: every metric of
        ``gate`` and ``ui_metrics``, plus ``rows``. Raises ValueError when the rows cannot judge a model. The gate
        and the monitor pass the model's numpy pass, or a Keras model (``Registry.load_predictor``): score it with
        ``ml.keras_models.predict``, which takes either.

        ``scores``: ``self.scores(model, preprocessing, rows)`` when the caller has them already (the gate scores
        each model once for its metrics and their interval). Only a use case with ``metric_functions`` is
        passed them."""

    def scores(self, model: keras.Model | NumpyForward, preprocessing: Preprocessing, rows: pd.DataFrame) -> np.ndarray:
        """The model's output per row of ``rows`` that ``metric_functions`` read (a probability, an anomaly
        score), shape (n,). Needed only with ``metric_functions``."""
        raise NotImplementedError(f"use case {self.name} gives no per-row scores")

    def metric_functions(self, preprocessing: Preprocessing) -> Mapping[str, MetricFunction]:
        """Metric name -> ``fn(y, scores, weights)`` computing that metric of ``evaluate`` from the labels, the
        ``scores`` of a model with ``preprocessing`` and per-row weights (None: each row once), for the metrics
        of ``gate`` the gate may put a confidence interval on (``ml.bootstrap``: mark a function ``batched``
        when it also takes a (k, n) weight matrix, and the bootstrap is much faster). Empty by default: the
        gate then compares point values only."""
        return {}

    def load_preprocessing(self, data: Mapping[str, Any]) -> Preprocessing:
        """A fitted preprocessing from its dict (MLflow, an envelope); ValueError when it is not this use
        case's or not this code's version."""
        return self.preprocessing.from_dict(data)

    def gate_criteria(self, margins: Mapping[str, float] | None = None) -> tuple[Criterion, ...]:
        """``gate`` with the settings' margins and floors, then a run's ``margins``; ValueError naming a metric
        the gate does not judge."""
        return with_overrides(self.gate, margins={**self.settings.gate_margins, **(margins or {})},
                              floors=self.settings.gate_floors)

    # ------------------------------------------------------------ scoring side (the scorer)

    @abstractmethod
    def transform(self, preprocessing: Preprocessing, data: pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]]
                  ) -> dict[str, np.ndarray]:
        """The model's named inputs for rows of ``input_contract`` (an Arrow table, a DataFrame or records):
        the one preprocessing path, shared by training, evaluation and scoring. Raises ValueError for rows it
        cannot read."""

    @abstractmethod
    def input_shapes(self, preprocessing: Preprocessing) -> dict[str, tuple[int, ...]]:
        """Name -> shape of one row of each model input ``transform`` yields."""

    def index_ranges(self, preprocessing: Preprocessing) -> dict[str, int]:
        """Name -> number of distinct values of each integer input (an embedding's table must have as many
        rows); the scorer checks the model against them. None by default."""
        return {}

    @abstractmethod
    def output_shape(self, preprocessing: Preprocessing) -> tuple[int, ...]:
        """The shape of one row of the model's output."""

    @abstractmethod
    def canary_records(self, preprocessing: Preprocessing) -> list[dict[str, Any]]:
        """Plausible input records: a new model must score them through ``transform`` before it serves."""

    def check_preprocessing(self, preprocessing: Preprocessing) -> list[str]:
        """Why the scorer cannot serve a model with ``preprocessing`` (empty when it can): by default, the fields
        it reads must be fields of ``input_contract`` with the same types."""
        return schema_problems(preprocessing, self.input_contract)

    @abstractmethod
    def predictions(self, preprocessing: Preprocessing, inputs: dict[str, np.ndarray], outputs: np.ndarray,
                    table: pa.Table) -> dict[str, pa.Array | str]:
        """This use case's fields of the prediction records of ``table``'s rows, given the model ``inputs`` and
        ``outputs``: JSON-literal columns (``ml.json_columns.json_column``) or constants (``literal``). The
        scorer adds the fields of ``ScoredEvent``."""

    # ------------------------------------------------------------ live monitoring (the monitor)

    def live_metrics(self, y: np.ndarray, scores: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
        """Metrics of predictions joined with their labels (``y``: labels, ``scores`` and ``decisions``: the
        fields ``live`` names); every key a metric name, NaN where the rows cannot define it (one class)."""
        raise NotImplementedError(f"use case {self.name} declares no live metrics")

    # ------------------------------------------------------------ tools

    def cli(self) -> typer.Typer | None:
        """Commands of its own (e.g. replaying its source data), shown as ``python -m ml <name> ...``."""
        return None


# ---------------------------------------------------------------- registry


@functools.cache
def _registered(path: tuple[str, ...]) -> dict[str, EntryPoint]:
    # Keyed by sys.path: a distribution added to the path later (a plugin folder) is found on the next call.
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _entry_points() -> dict[str, EntryPoint]:
    return _registered(tuple(sys.path))


def names() -> list[str]:
    """The names of the registered use cases, sorted (nothing is imported)."""
    return sorted(_entry_points())


def require_known(name: str) -> None:
    """Raises UnknownUseCase unless a use case called ``name`` is registered."""
    if name not in _entry_points():
        raise UnknownUseCase(f"unknown use case {name!r}; registered: {names()} (entry-point group "
                             f"{ENTRY_POINT_GROUP!r})")


@functools.cache
def _load(name: str, path: tuple[str, ...]) -> type[UseCase]:
    ep = _registered(path).get(name)
    if ep is None:
        require_known(name)
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, UseCase)):
        raise TypeError(f"entry point {name} = {ep.value} is not a subclass of ml.use_cases.UseCase")
    if cls.name != name:
        raise TypeError(f"entry point {name} = {ep.value} loads the use case named {cls.name!r}")
    return cls


def use_case_class(name: str) -> type[UseCase]:
    """The class of the use case called ``name`` (its facts, without reading its settings). Imports its package
    on first use. Raises UnknownUseCase (a ValueError) listing the registered ones."""
    return _load(name, tuple(sys.path))


def get(name: str) -> UseCase:
    """The use case called ``name``, with its settings read from the environment now. Raises UnknownUseCase
    (a ValueError) listing the registered ones."""
    return use_case_class(name)()


def registered() -> list[UseCase]:
    """Every registered use case (each package imported)."""
    return [get(name) for name in names()]


def selected(settings: LoopSettings) -> UseCase:
    """The use case ``settings`` select; raises UnknownUseCase when they select none."""
    if settings.use_case is None:
        raise UnknownUseCase(f"no use case selected: set USE_CASE (or --use-case) to one of {names()}")
    return get(settings.use_case)


def problems(uc: UseCase) -> list[str]:
    """What is inconsistent in a use case's facts, checked without data (empty when nothing is): a team runs it
    on its package (``python -m ml use-cases``) before the loop meets the use case."""
    import typing
    from datetime import datetime

    from ml.contracts import field_specs

    cls = type(uc)
    found = []
    if not uc.name.isidentifier() or uc.name != uc.name.lower():
        found.append(f"name {uc.name!r} is not a lower-case identifier (it names a DAG and a variable prefix)")
    for attr, base in (("input_contract", Contract), ("label_contract", Contract),
                       ("prediction_contract", ScoredEvent), ("preprocessing", Preprocessing),
                       ("Settings", UseCaseSettings)):
        value = getattr(cls, attr, None)
        if not (isinstance(value, type) and issubclass(value, base)):
            found.append(f"{attr} is not a subclass of {base.__name__}")
    if found:
        return found
    labels = {f.name: f for f in field_specs(uc.label_contract)}
    if uc.label not in labels:
        found.append(f"label {uc.label!r} is not a field of {uc.label_contract.__name__}")
    missing = [c for c in uc.time_order if c not in labels]
    if not uc.time_order or missing:
        found.append(f"time_order {uc.time_order} names no field or fields {missing} not in "
                     f"{uc.label_contract.__name__}")
    elif labels[uc.time_order[0]].base is not datetime:
        found.append(f"time_order starts with {uc.time_order[0]!r}, which is not a timestamp")
    for contract in (uc.input_contract, uc.label_contract, uc.prediction_contract):
        if getattr(contract, "EVENT_TIME", None) not in contract.model_fields:
            found.append(f"{contract.__name__}.EVENT_TIME names no field of it")
    if uc.input_contract.KEY is not None and uc.input_contract.KEY not in uc.input_contract.model_fields:
        found.append(f"{uc.input_contract.__name__}.KEY names no field of it")
    literal = typing.get_args(uc.preprocessing.model_fields["use_case"].annotation)
    if literal != (uc.name,):
        found.append(f"{uc.preprocessing.__name__}.use_case must be Literal[{uc.name!r}], not {literal or 'str'}")
    metrics = [c.metric for c in uc.gate]
    if not metrics:
        found.append("the gate has no criteria: nothing would ever be promoted")
    if len(set(metrics)) < len(metrics):
        found.append(f"the gate judges a metric twice: {metrics}")
    if not uc.ui_metrics:
        found.append("ui_metrics is empty: the loop's page would show no metric")
    if not all([uc.topics.input, uc.topics.labels, uc.topics.predictions, uc.topics.dlq]):
        found.append(f"a topic has no name: {uc.topics}")
    if uc.live is not None:
        predicted = uc.prediction_contract.model_fields
        absent = [f for f in (uc.live.key, uc.live.score, uc.live.decision) if f not in predicted]
        if absent or uc.live.key not in labels:
            found.append(f"live names fields {absent or [uc.live.key]} missing from "
                         f"{uc.prediction_contract.__name__ if absent else uc.label_contract.__name__}")
    if cls.metric_functions is not UseCase.metric_functions and cls.scores is UseCase.scores:
        found.append("metric_functions without scores: the gate has no scores to compute them from")
    try:
        uc.gate_criteria()
    except ValueError as e:  # the environment's overrides of its gate
        found.append(str(e))
    return found
