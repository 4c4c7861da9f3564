"""The Airflow glue of the loop, testable without a scheduler: run requests, settings from connections, one
function per DAG task, rollout verification on the status topic and the asset event that started a run.

Every task function takes the settings and small JSON references (dicts) and returns one, so XCom carries
manifests, candidates and decisions, never data. A run that must stop without failing (too little data, a
failed validation, a lost gate) raises ``StopRun`` with the reason; the DAG turns it into a skip. Links to
MLflow and to the Data Docs travel in the returned dict under ``links`` (XCom key -> URL).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ml.client_ids import ROLLOUT_CHECK_GROUP
from ml.errors import AlreadySnapshotted, BrokerUnavailable, InsufficientData, LoopError, ValidationFailed
from ml.settings import LoopSettings

log = logging.getLogger(__name__)

TASKS = ("snapshot", "validate", "train", "evaluate", "register", "publish", "verify_rollout")
MLFLOW_RUN_LINK = "mlflow_run_url"  # XCom keys read by the plugin's operator extra links
DATA_DOCS_LINK = "data_docs_url"
# Keys of the Kafka connection's extra that belong to one consumer, not to every client of the loop.
CONNECTION_CONSUMER_KEYS = frozenset({"group.id", "auto.offset.reset", "enable.auto.commit"})
DATA_DOCS_ROUTE = "/retrain-loop/data-docs"  # served by plugins/retrain_loop.py from reports_dir/data_docs


def dag_id(use_case: str) -> str:
    """The id of the retraining DAG of ``use_case``."""
    return f"retrain_{use_case}"


class StopRun(LoopError):
    """The run ends here on purpose (skip, not failure): ``kind`` says why, ``links`` what to look at."""

    def __init__(self, kind: str, reason: str, links: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.links = links or {}
        super().__init__(f"{kind}: {reason}")


class RolloutFailed(LoopError):
    """No scorer took the published version live in time, or a scorer rejected it."""


GATE_MARGIN_PARAM = "gate_margin_"  # the UI's Param of a criterion's margin: gate_margin_<metric>


class RunRequest(BaseModel):
    """What a run may override (the DAG's Params); None keeps the value from the environment/settings."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    snapshot_window: int | None = Field(None, ge=1, le=120)
    epochs: int | None = Field(None, ge=1, le=200)
    # metric -> margin of this run's gate (the Params gate_margin_<metric>; empty ones are left out)
    gate_margins: dict[str, Annotated[float, Field(ge=0)]] = {}
    force_promote: bool = False
    force_reason: str | None = None
    rollout_timeout_s: float = Field(600.0, ge=0, le=3600)
    trigger: str | None = Field(None, max_length=2000)  # why the run started (the live monitor's reason)
    # Publish a promoted candidate in shadow rather than as the champion (None: SHADOW_FIRST).
    shadow: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _collect_margins(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        margins = {k.removeprefix(GATE_MARGIN_PARAM): v for k, v in data.items()
                   if k.startswith(GATE_MARGIN_PARAM) and v is not None}
        return {**data, "gate_margins": {**(data.get("gate_margins") or {}), **margins}}

    @model_validator(mode="after")
    def _force_needs_reason(self) -> RunRequest:
        # The UI form validates each field alone; this pair can only be checked together, before any work.
        reason = (self.force_reason or "").strip()
        if self.force_promote and len(reason) < 5:
            raise ValueError("force_promote needs a force_reason of at least 5 characters (it is recorded in "
                             "the gate decision)")
        if reason and not self.force_promote:
            raise ValueError("force_reason is set but force_promote is false: tick force_promote or clear it")
        return self

    def forced_reason(self) -> str | None:
        return self.force_reason.strip() if self.force_promote else None


def settings_for_run(request: Mapping[str, Any] | RunRequest, *, kafka_extra: Mapping[str, Any] | None = None,
                     mlflow_tracking_uri: str | None = None, base: LoopSettings | None = None,
                     use_case: str | None = None, signing_pem: str | None = None,
                     signing_key_id: str | None = None) -> LoopSettings:
    """LoopSettings from the environment, then the DAG's use case, the Airflow Kafka connection's config dict
    and MLflow URI, the Airflow signing connection's private key (PEM) and key id, then the run's overrides (its
    gate margins go to ``evaluate``). Raises pydantic.ValidationError for an invalid request.

    A ``use_case`` other than the environment's also replaces the environment's model name and MLflow
    experiment (they belong to the other use case) with the defaults of ``use_case``.
    """
    req = request if isinstance(request, RunRequest) else RunRequest.model_validate(dict(request))
    settings = base or LoopSettings()
    update: dict[str, Any] = {}
    if use_case is not None and use_case != settings.use_case:
        update |= {"use_case": use_case, "model_name": None, "mlflow_experiment": None}
    if kafka_extra:
        # The connection's librdkafka properties (bootstrap servers, security, credentials) over the
        # environment's; the keys that configure only the AssetWatcher's own consumer are left out.
        props = {k: v for k, v in kafka_extra.items() if k not in CONNECTION_CONSUMER_KEYS}
        update["kafka_bootstrap_servers"] = props.pop("bootstrap.servers", None) or settings.kafka_bootstrap_servers
        update["kafka_client_properties"] = {**settings.kafka_client_properties, **props}
    if mlflow_tracking_uri:
        update["mlflow_tracking_uri"] = mlflow_tracking_uri
    if signing_pem:
        # The connection's key comes with its own id (None: derived from the key), never the environment's.
        update |= {"model_signing_key": signing_pem, "model_signing_key_id": signing_key_id}
    for field in ("snapshot_window", "epochs"):
        if getattr(req, field) is not None:
            update[field] = getattr(req, field)
    # model_copy skips validation: re-validate so a bad override fails here, not deep in a step.
    return LoopSettings.model_validate({**settings.model_dump(), **update})


# ---------------------------------------------------------------- one function per task

def _dump(obj: BaseModel) -> dict[str, Any]:
    return obj.model_dump(mode="json")


def _mlflow_links(settings: LoopSettings, mlflow_ui_url: str | None, mlflow_run_id: str) -> dict[str, str]:
    if not mlflow_ui_url:
        return {}
    from ml.registry import Registry

    experiment = Registry(settings).experiment_id
    return {MLFLOW_RUN_LINK: f"{mlflow_ui_url.rstrip('/')}/#/experiments/{experiment}/runs/{mlflow_run_id}"}


def _docs_links(settings: LoopSettings, data_docs_path: str | None) -> dict[str, str]:
    if not data_docs_path:
        return {}
    from pathlib import Path

    relative = Path(data_docs_path).resolve().relative_to((settings.reports_dir / "data_docs").resolve())
    return {DATA_DOCS_LINK: f"{DATA_DOCS_ROUTE}/{relative.as_posix()}"}


def snapshot(settings: LoopSettings, run_id: str, announced: dict[str, Any] | None = None) -> dict[str, Any]:
    """Snapshot the use case's training topic for this run (a retry returns the same manifest); ``announced``:
    the new records whose announcement started the run, which the snapshot must cover."""
    from ml import pipeline
    from ml.new_records import Announcement

    try:
        return _dump(pipeline.snapshot_step(settings, run_id, Announcement.model_validate(announced) if announced
                                            else None))
    except AlreadySnapshotted as e:
        raise StopRun("already_snapshotted", str(e)) from e


def validate(settings: LoopSettings, run_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Validate the snapshot; the report's summary with a Data Docs link. StopRun when too small or invalid."""
    from ml import pipeline
    from ml.snapshot import SnapshotManifest

    try:
        report = pipeline.validate_step(settings, run_id, SnapshotManifest.model_validate(manifest))
    except InsufficientData as e:
        raise StopRun("insufficient_data", str(e),
                      _docs_links(settings, e.report.data_docs_path if e.report else None)) from e
    except ValidationFailed as e:
        raise StopRun("validation_failed", str(e), _docs_links(settings, e.report.data_docs_path)) from e
    return {"success": report.success, "rows": report.rows, "rejected": report.rejected,
            "warnings": report.warnings, "max_psi": max(report.drift.values(), default=None),
            "report_path": report.report_path, "links": _docs_links(settings, report.data_docs_path)}


def train(settings: LoopSettings, run_id: str, *, mlflow_ui_url: str | None = None) -> dict[str, Any]:
    """Train the challenger (a retry reuses the finished MLflow run of ``run_id``). StopRun on too few rows."""
    from ml import pipeline

    try:
        candidate = pipeline.train_step(settings, run_id, params={"airflow_run_id": run_id})
    except InsufficientData as e:
        raise StopRun("insufficient_data", str(e)) from e
    return {**_dump(candidate), "links": _mlflow_links(settings, mlflow_ui_url, candidate.mlflow_run_id)}


def evaluate(settings: LoopSettings, candidate: dict[str, Any], *, force_reason: str | None = None,
             gate_margins: dict[str, float] | None = None, trigger: str | None = None,
             mlflow_ui_url: str | None = None) -> dict[str, Any]:
    """The gate's decision record (a retry returns the one already logged); ``trigger``: why the run started."""
    from ml import pipeline

    decision = pipeline.evaluate_step(settings, pipeline.Candidate.model_validate(candidate),
                                      force_reason=force_reason, gate_margins=gate_margins, trigger=trigger)
    return {**_dump(decision), "links": _mlflow_links(settings, mlflow_ui_url, candidate["mlflow_run_id"])}


def register(settings: LoopSettings, candidate: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """Register the promoted candidate; StopRun carrying the gate's reasons when it was rejected."""
    from ml import pipeline
    from ml.gate import DecisionRecord

    record = DecisionRecord.model_validate(decision)
    if not record.promote:
        raise StopRun("gate_rejected", f"decision {record.decision_id}: " + "; ".join(record.reasons))
    version = pipeline.register_step(settings, pipeline.Candidate.model_validate(candidate), record)
    return {"model_name": settings.model_name, "model_version": version}


def publish(settings: LoopSettings, candidate: dict[str, Any], decision: dict[str, Any],
            registered: dict[str, Any], *, shadow: bool | None = None) -> dict[str, Any]:
    """Publish the signed envelope and move @champion, or in shadow (``shadow``; None: SHADOW_FIRST) and set
    @shadow; a version already on the topic in that stage is not produced again."""
    from ml import pipeline
    from ml.gate import DecisionRecord

    stage = "shadow" if (settings.shadow_first if shadow is None else shadow) else "champion"
    result = pipeline.publish_step(settings, pipeline.Candidate.model_validate(candidate),
                                   DecisionRecord.model_validate(decision), registered["model_version"], stage)
    return _dump(result)


def verify_rollout(settings: LoopSettings, published: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Wait until a scorer reports the published version live (in shadow, for a shadow); StopRun when the check
    is disabled (0 s)."""
    if timeout_s <= 0:
        raise StopRun("rollout_unchecked", "rollout_timeout_s is 0: not waiting for a scorer")
    return wait_for_live(settings, published["model_version"], timeout_s, stage=published.get("stage", "champion"))


# ---------------------------------------------------------------- rollout verification

def wait_for_live(settings: LoopSettings, version: int, timeout_s: float, *, topic: str | None = None,
                  stage: str = "champion") -> dict[str, Any]:
    """The first status record saying a scorer runs ``settings.model_name`` ``version`` (or a newer one) live;
    for a ``stage`` "shadow", runs ``version`` in shadow (or live: promoted meanwhile).

    Reads the status topic from the beginning (records written before the wait count: a fast scorer may
    report before this task starts). Raises RolloutFailed when a scorer rejects that version, or when no
    live record arrives within ``timeout_s`` (a missing topic counts as no record yet).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    from ml.wire import TopicReader, WireError

    topic = topic or settings.status_topic
    reader = TopicReader(settings, topic)
    name = settings.model_name
    consumer = Consumer(settings.kafka_config({
        # Assigned partitions, nothing committed: every wait reads the whole (small) topic again.
        "group.id": f"{ROLLOUT_CHECK_GROUP}{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "log_level": 0,
    }))
    deadline = time.monotonic() + timeout_s
    seen = 0
    try:
        assigned = False
        while time.monotonic() < deadline:
            if not assigned:
                try:
                    meta = consumer.list_topics(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                except KafkaException as e:  # no broker answered
                    raise BrokerUnavailable(settings.kafka_bootstrap_servers, e) from e
                found = meta.topics.get(topic)
                if found is None or found.error is not None or not found.partitions:
                    time.sleep(0.5)
                    continue
                consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in found.partitions])
                assigned = True
                log.info("waiting up to %.0f s for %s v%d to go live on %s", timeout_s, name, version, topic)
            msg = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise BrokerUnavailable(settings.kafka_bootstrap_servers, msg.error())
            seen += 1
            try:
                record = reader.loads(msg.value())
                status, v = record["status"], record["model_version"]
            except (WireError, TypeError, KeyError) as e:
                log.warning("unreadable status record at %s[%d]@%d: %s", topic, msg.partition(), msg.offset(), e)
                continue
            if record.get("model_name") != name or not isinstance(v, int):
                continue
            if status == "rejected" and v == version:
                raise RolloutFailed(f"scorer {record.get('scorer_id')} rejected {name} v{version} "
                                    f"({record.get('reason_kind')}): {record.get('reason')}")
            if stage == "shadow" and status in ("shadow", "live") and v == version:
                log.info("%s v%d is %s on scorer %s (status %s[%d]@%d)", name, v, status, record.get("scorer_id"),
                         topic, msg.partition(), msg.offset())
                return record
            if stage != "shadow" and status == "live" and v >= version:
                log.info("%s v%d is live on scorer %s (status %s[%d]@%d)%s", name, v, record.get("scorer_id"),
                         topic, msg.partition(), msg.offset(), "" if v == version else f", superseding v{version}")
                return record
    finally:
        consumer.close()
    raise RolloutFailed(f"no scorer reported {name} v{version} {'in shadow' if stage == 'shadow' else 'live'} on "
                        f"{topic} within {timeout_s:.0f} s "
                        f"({seen} status records read){'' if assigned else '; the topic does not exist'}")


# ---------------------------------------------------------------- the event that started a run

def announced_by(events: Iterable[Any]) -> dict[str, Any] | None:
    """The announcement (``ml.new_records``) carried by the newest of a run's triggering asset events (their
    ``extra["payload"]``, as the triggerer stores a trigger's event), or None: a scheduled or manual run."""
    found = None
    for event in events:
        payload = (getattr(event, "extra", None) or {}).get("payload")
        if isinstance(payload, dict) and "announcement_id" in payload:
            found = payload
    return found
