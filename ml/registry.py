"""MLflow 3 tracking and model registry of the loop: runs, lineage to Kafka offsets, versions, the champion alias.

Each candidate is one MLflow run holding its params, metrics, the gate's decision record and the snapshot
manifests it was trained on (exact topic/partition offset ranges), plus one Keras model logged with the keras
flavour and its fitted preprocessing. Registered versions of ``settings.model_name`` are promoted by moving the
``champion`` alias.

Nothing happens at import: the tracking URI is passed to ``MlflowClient`` and set globally only inside the
functions that need MLflow's fluent API (logging and loading a model).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ml.errors import LoopError, RegistryUnavailable
from ml.keras_models import LOAD_OPTIONS
from ml.settings import LoopSettings

if TYPE_CHECKING:
    import keras
    from mlflow import MlflowClient

    from ml.numpy_forward import NumpyForward

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
SHADOW_ALIAS = "shadow"
MODEL_ARTIFACT = "model"
KERAS_ARCHIVE = "model.keras"  # the keras flavour's file under its data folder
DECISION_FILE = "decision.json"
LINEAGE_FILE = "lineage/snapshot_manifests.json"
PREPROCESSING_FILE = "preprocessing.json"
PROBE_TIMEOUT_S = 3.0
MAX_TAG_CHARS = 5000  # MLflow rejects longer tag values on some stores; 8000 is the sqlite limit


def model_signature(keras_model: keras.Model) -> Any:
    """The MLflow signature of a functional Keras model: one tensor per named input and output, batch dimension
    free (-1). MLflow shows it with the model and checks a pyfunc caller's inputs against it; None for a model
    whose inputs are not defined (a subclassed model not yet called)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    try:
        inputs, outputs = keras_model.inputs, keras_model.outputs
    except AttributeError:
        return None
    if not inputs or not outputs:
        return None

    def spec(tensors: Sequence[Any], named: bool) -> Schema:
        return Schema([TensorSpec(np.dtype(t.dtype), (-1, *(-1 if d is None else d for d in t.shape[1:])),
                                  t.name if named else None) for t in tensors])

    # Several tensors are fed and read by name; a single one as a plain array (its Keras name is often generated).
    return ModelSignature(inputs=spec(inputs, named=len(inputs) > 1), outputs=spec(outputs, named=len(outputs) > 1))


class ChampionInfo(BaseModel):
    """The model version behind the ``champion`` alias, with what it was trained on."""

    model_config = ConfigDict(protected_namespaces=())

    version: int
    run_id: str
    model_uri: str
    preprocessing: dict[str, Any]
    metrics: dict[str, float]
    lineage: list[dict[str, Any]]


def _as_dict(obj: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    return obj.model_dump(mode="json") if isinstance(obj, BaseModel) else dict(obj)


def compact_lineage(manifests: Sequence[Mapping[str, Any]]) -> str:
    """``topic[partition:start-end,...]`` per manifest, ``;``-separated (offsets ``[start, end)``), for a run tag.

    Each manifest (``ml.snapshot.SnapshotManifest`` as a dict) needs ``topic`` and ``partitions``: a list of
    ``{partition, start, end}``.
    """
    parts = []
    for m in manifests:
        missing = {"topic", "partitions"} - m.keys()
        if missing:
            raise ValueError(f"snapshot manifest lacks {sorted(missing)}: {sorted(m)}")
        ranges = ",".join(f"{p['partition']}:{p['start']}-{p['end']}" for p in m["partitions"])
        parts.append(f"{m['topic']}[{ranges}]")
    return ";".join(parts)


def _pip_requirements() -> list[str]:
    # Explicit requirements: letting MLflow infer them re-imports TensorFlow in a subprocess, many times slower.
    return [f"keras=={installed_version('keras')}", f"tensorflow-cpu=={installed_version('tensorflow-cpu')}"]


class Registry:
    """Tracking and registry operations for ``settings.model_name`` in ``settings.mlflow_experiment``.

    Every method raises ``RegistryUnavailable`` naming the tracking URI when MLflow cannot be reached.
    """

    def __init__(self, settings: LoopSettings) -> None:
        if settings.model_name is None or settings.mlflow_experiment is None:
            raise ValueError("no model name or MLflow experiment: set USE_CASE (or MODEL_NAME and MLFLOW_EXPERIMENT)")
        # MLflow draws a progress bar per artifact download: carriage-return lines in every task's and the
        # monitor's log. Off unless the environment says otherwise.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.settings = settings
        self.uri = settings.mlflow_tracking_uri
        self.name = settings.model_name
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    # ------------------------------------------------------------ connection

    def _probe(self) -> None:
        """Fail fast: an unreachable server would otherwise be retried with backoff for minutes."""
        if self.uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S) as r:
                    r.read()
            except (urllib.error.URLError, OSError) as e:
                raise RegistryUnavailable(f"MLflow tracking server at {self.uri} is unreachable: {e}") from e
        elif self.uri.startswith("sqlite:///"):
            # sqlite:///relative/path or sqlite:////absolute/path: SQLAlchemy does not create the folder.
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def client(self) -> MlflowClient:
        """A client bound to the tracking URI, with the experiment created on first use."""
        if self._client is not None:
            return self._client
        self._probe()  # before importing MLflow (seconds): an unreachable server fails at once
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        try:
            client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            exp = client.get_experiment_by_name(self.settings.mlflow_experiment)
            if exp is None:
                # An absolute artifact location: a relative one would resolve against each process's cwd.
                location = self.settings.mlflow_artifact_root.resolve().as_uri()
                self._experiment_id = client.create_experiment(self.settings.mlflow_experiment,
                                                               artifact_location=location)
                log.info("created MLflow experiment %s (id %s) at %s, artifacts in %s",
                         self.settings.mlflow_experiment, self._experiment_id, self.uri, location)
            else:
                self._experiment_id = exp.experiment_id
        except (MlflowException, SQLAlchemyError, OSError) as e:
            raise RegistryUnavailable(f"MLflow at {self.uri} cannot be used: {e}") from e
        self._client = client
        return client

    @property
    def experiment_id(self) -> str:
        self.client()
        assert self._experiment_id is not None
        return self._experiment_id

    def _use_fluent(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)

    # ------------------------------------------------------------ runs

    @contextmanager
    def start_run(self, run_name: str, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, str] | None = None) -> Iterator[str]:
        """Open a run in the loop's experiment and yield its id; it ends FINISHED, or FAILED on an exception."""
        import mlflow

        experiment_id = self.experiment_id
        self._use_fluent()
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as run:
            run_id = run.info.run_id
            if params:
                mlflow.log_params(dict(params))
            log.info("MLflow run %s (%s) started in experiment %s", run_id, run_name, experiment_id)
            yield run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_decision(self, run_id: str, decision: BaseModel | Mapping[str, Any]) -> None:
        """The gate's decision record as ``decision.json``, its id, verdict and reasons as tags."""
        record = _as_dict(decision)
        client = self.client()
        client.log_dict(run_id, record, DECISION_FILE)
        tags = {"decision_id": str(record["decision_id"]), "decision_verdict": str(record["verdict"])}
        if record.get("reasons"):
            tags["decision_reasons"] = "; ".join(map(str, record["reasons"]))[:MAX_TAG_CHARS]
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        log.info("run %s: decision %s (%s) logged", run_id, tags["decision_id"], tags["decision_verdict"])

    def log_lineage(self, run_id: str, manifests: Sequence[BaseModel | Mapping[str, Any]]) -> str:
        """The snapshot manifests as a JSON artifact and their topic/offset ranges as the ``lineage`` tag."""
        docs = [_as_dict(m) for m in manifests]
        compact = compact_lineage(docs)
        if len(compact) > MAX_TAG_CHARS:
            raise ValueError(f"lineage tag of {len(compact)} chars exceeds {MAX_TAG_CHARS}: {compact[:200]}...")
        client = self.client()
        client.log_dict(run_id, docs, LINEAGE_FILE)
        client.set_tag(run_id, "lineage", compact)
        log.info("run %s: lineage %s", run_id, compact)
        return compact

    # ------------------------------------------------------------ models

    def log_model(self, run_id: str, keras_model: keras.Model, preprocessing: Mapping[str, Any]) -> str:
        """Log the model with the keras flavour under ``run_id``; returns its ``models:/m-...`` URI.

        The fitted preprocessing goes into the model's MLmodel metadata and into the run as
        ``preprocessing.json``; the model's input and output tensors are its signature (``model_signature``).
        """
        import mlflow

        fitted = dict(preprocessing)
        client = self.client()
        self._use_fluent()
        active = mlflow.active_run()
        # log_model attaches the model to the active run: resume ours unless start_run() already holds it.
        resume = active is None or active.info.run_id != run_id
        if resume:
            mlflow.start_run(run_id=run_id)
        try:
            info = mlflow.keras.log_model(keras_model, name=MODEL_ARTIFACT, pip_requirements=_pip_requirements(),
                                          signature=model_signature(keras_model), metadata={"preprocessing": fitted})
        finally:
            if resume:
                mlflow.end_run()
        client.log_dict(run_id, fitted, PREPROCESSING_FILE)
        log.info("run %s: model logged as %s", run_id, info.model_uri)
        return info.model_uri

    def find_run(self, tag: str, value: str) -> str | None:
        """The id of the newest FINISHED run of the experiment whose tag ``tag`` equals ``value``, if any."""
        runs = self.client().search_runs(
            [self.experiment_id], filter_string=f"tags.{tag} = '{value}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client().get_run(run_id).data.tags)

    def decision(self, run_id: str) -> dict[str, Any] | None:
        """The decision record logged to ``run_id``, or None if the gate has not judged it yet."""
        if "decision_id" not in self.run_tags(run_id):
            return None
        return self._download_json(run_id, DECISION_FILE)

    def lineage(self, run_id: str) -> list[dict[str, Any]]:
        """The snapshot manifests the model of ``run_id`` was trained on (``log_lineage``)."""
        return self._download_json(run_id, LINEAGE_FILE)

    def preprocessing(self, run_id: str) -> dict[str, Any]:
        """The fitted preprocessing logged with the model of ``run_id``."""
        return self._download_json(run_id, PREPROCESSING_FILE)

    def register(self, run_id: str, model_uri: str) -> int:
        """Register ``model_uri`` as a version of ``settings.model_name``; returns the version number.

        Idempotent per run: a retry returns the version already registered from ``run_id``.
        """
        import mlflow

        existing = self.client().search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
        if existing:
            version = max(int(mv.version) for mv in existing)
            log.info("%s v%d is already registered from run %s: reusing it", self.name, version, run_id)
            return version
        self._use_fluent()
        mv = mlflow.register_model(model_uri, self.name, tags={"run_id": run_id})
        version = int(mv.version)
        log.info("registered %s v%d from run %s (%s)", self.name, version, run_id, model_uri)
        return version

    def promote(self, version: int) -> None:
        """Point the ``champion`` alias at ``version``."""
        self.client().set_registered_model_alias(self.name, CHAMPION_ALIAS, str(version))
        log.info("%s v%d is now @%s", self.name, version, CHAMPION_ALIAS)

    def mark_shadow(self, version: int) -> None:
        """Point the ``shadow`` alias at ``version`` (published in shadow: ``@champion`` does not move)."""
        self.client().set_registered_model_alias(self.name, SHADOW_ALIAS, str(version))
        log.info("%s v%d is now @%s", self.name, version, SHADOW_ALIAS)

    def clear_shadow(self) -> int | None:
        """Remove the ``shadow`` alias; the version it pointed at, None when there was none."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            version = int(client.get_model_version_by_alias(self.name, SHADOW_ALIAS).version)
        except MlflowException:  # no such alias (or no such model yet): nothing to clear
            return None
        client.delete_registered_model_alias(self.name, SHADOW_ALIAS)
        log.info("%s v%d is no longer @%s", self.name, version, SHADOW_ALIAS)
        return version

    def _download_json(self, run_id: str, path: str) -> Any:
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client().download_artifacts(run_id, path, dst_path=tmp)
            return json.loads(Path(local).read_text())

    def champion(self) -> ChampionInfo | None:
        """The version behind ``@champion`` with its preprocessing, metrics and lineage; None before the first."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        client = self.client()
        try:
            mv = client.get_model_version_by_alias(self.name, CHAMPION_ALIAS)
        except MlflowException as e:
            if e.error_code in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), "INVALID_PARAMETER_VALUE"):
                return None
            raise
        run = client.get_run(mv.run_id)
        return ChampionInfo(
            version=int(mv.version), run_id=mv.run_id, model_uri=f"models:/{self.name}/{mv.version}",
            preprocessing=self.preprocessing(mv.run_id),
            metrics=dict(run.data.metrics), lineage=self.lineage(mv.run_id),
        )

    def load_model(self, version_or_uri: int | str) -> keras.Model:
        """Load a registered version (int) or any model URI (``models:/...``, ``runs:/...``) as a Keras model for
        predictions, as the scorer loads it (``keras_models.LOAD_OPTIONS``)."""
        import mlflow

        uri = f"models:/{self.name}/{version_or_uri}" if isinstance(version_or_uri, int) else version_or_uri
        self.client()
        self._use_fluent()
        model = mlflow.keras.load_model(uri, load_model_kwargs=dict(LOAD_OPTIONS))
        log.info("loaded %s", uri)
        return model

    def load_predictor(self, version_or_uri: int | str) -> keras.Model | NumpyForward:
        """A registered version (int) or model URI for ``keras_models.predict``: the numpy pass of its ``.keras``
        archive, read without importing TensorFlow (``ml.keras_archive``: the arithmetic the scorer serves), or the
        Keras model loaded from it when it holds what that pass does not mirror. Raises LoopError when the model holds
        no ``.keras`` archive (it could not be published either)."""
        from ml.keras_archive import archive_forward
        from ml.keras_models import from_bytes
        from ml.numpy_forward import UnsupportedModel

        uri = f"models:/{self.name}/{version_or_uri}" if isinstance(version_or_uri, int) else version_or_uri
        data = self._archive(uri)
        try:
            forward = archive_forward(data)
        except UnsupportedModel as e:
            log.info("%s has no exact numpy pass (%s): loading it with Keras", uri, e)
            return from_bytes(data)
        log.info("loaded %s as its numpy pass (%d layers)", uri, len(forward.steps))
        return forward

    def model_archive(self, version: int) -> bytes:
        """The ``.keras`` archive of registered ``version``, byte for byte as ``log_model`` stored it: what is
        published, read without loading Keras (or TensorFlow) to save it again. Raises LoopError when the version's
        model holds no such archive (a model not logged by ``log_model``)."""
        return self._archive(f"models:/{self.name}/{version}")

    def _archive(self, uri: str) -> bytes:
        import mlflow
        from mlflow.models import Model

        self.client()
        self._use_fluent()
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
            flavor = Model.load(local / "MLmodel").flavors.get("keras", {})
            archive = local / str(flavor.get("data", "")) / KERAS_ARCHIVE
            if not flavor or flavor.get("save_exported_model") or not archive.is_file():
                raise LoopError(f"{uri} holds no {KERAS_ARCHIVE} archive of the keras flavour: not publishable")
            data = archive.read_bytes()
        log.info("read %s: a %d-byte %s archive", uri, len(data), KERAS_ARCHIVE)
        return data
