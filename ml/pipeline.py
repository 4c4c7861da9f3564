"""The retraining steps: one function per Airflow task, each passing small typed references, never data.

    snapshot -> validate -> train -> evaluate -> register -> publish

The steps are the same for every use case: what differs (training topic, contract, suite, holdout, training,
gate) comes from ``ml.usecases.get(settings.use_case)``.

Every step is safe to retry with the same ``loop_run_id`` (the Airflow run id): the snapshot of that id is
reused, a finished training run tagged with it is reused, registering a run twice returns its version, and
publishing a version already on the model topic is a no-op. ``retrain`` chains the steps in one process
(the CLI and the benchmark use it; the DAG calls the steps one by one).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ml import snapshot as snapshots, usecases
from ml.errors import InsufficientData, ValidationFailed
from ml.settings import LoopSettings

log = logging.getLogger(__name__)

LOOP_RUN_TAG = "loop_run_id"


class Candidate(BaseModel):
    """A trained challenger, logged in MLflow but not yet judged."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    loop_run_id: str
    mlflow_run_id: str
    model_uri: str
    contract_fingerprint: str
    snapshot_ids: list[str]
    rows_train: int
    rows_holdout: int
    train_seconds: float


class Outcome(BaseModel):
    """How one retraining ended, with the time each step took."""

    loop_run_id: str
    status: Literal["published", "rejected", "skipped", "invalid"]
    reason: str
    snapshot_id: str | None = None
    mlflow_run_id: str | None = None
    decision_id: str | None = None
    model_version: int | None = None
    published_offset: int | None = None
    seconds: dict[str, float] = {}


def snapshot_id_for(loop_run_id: str) -> str:
    """A snapshot id derived from the run id (Airflow run ids contain ':' and '+', which paths avoid)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", loop_run_id)


def snapshot_step(settings: LoopSettings, loop_run_id: str):
    """Snapshot the use case's training topic (`flights.completed`, `sensors.readings`) from the previous
    snapshot's end to the current end offsets.

    Returns the ``SnapshotManifest``; a retry of the same run returns the same manifest.
    """
    topic = usecases.get(settings.use_case).training_topic(settings)
    return snapshots.take_snapshot(settings, topic, snapshot_id=snapshot_id_for(loop_run_id))


def _champion_training_data(settings: LoopSettings, registry):
    """The champion's training rows (its lineage snapshots that are still on disk), or None."""
    champion = registry.champion()
    if champion is None:
        return None
    topic = usecases.get(settings.use_case).training_topic(settings)
    ids = [m["snapshot_id"] for m in champion.lineage if "snapshot_id" in m]
    available = {m.snapshot_id for m in snapshots.list_manifests(settings, topic)}
    present = [i for i in ids if i in available]
    if not present:
        log.warning("champion v%d was trained on snapshots %s that are not on disk: drift not computed",
                    champion.version, ids)
        return None
    df, _ = snapshots.load_snapshots(settings, topic, present)
    return df


def validate_step(settings: LoopSettings, loop_run_id: str, manifest):
    """Validate the new snapshot against its contract suite, with drift against the champion's training data.

    Returns the ``ValidationReport``. Raises InsufficientData (skip the run) or ValidationFailed (the report
    says which expectation failed on how many rows); Data Docs are written either way.
    """
    from ml.registry import Registry
    from ml.validate import validate_snapshot

    if manifest.row_count == 0:
        raise InsufficientData(0, settings.min_training_rows)
    df, _ = snapshots.load_snapshots(settings, manifest.topic, [manifest.snapshot_id])
    reference = _champion_training_data(settings, Registry(settings))
    return validate_snapshot(df, settings, run_id=snapshot_id_for(loop_run_id), reference=reference,
                             rejected=manifest.rejected_count, suite=usecases.get(settings.use_case).suite())


def train_step(settings: LoopSettings, loop_run_id: str, *, params: dict | None = None) -> Candidate:
    """Train a challenger on the snapshot window minus the most recent ``holdout_days``; log it in MLflow.

    The MLflow run holds the parameters, training metrics, the window's snapshot manifests (exact Kafka
    offsets) and the model with its feature contract. A retry reuses a finished run of the same loop run.
    """
    from ml.registry import Registry

    uc = usecases.get(settings.use_case)
    topic = uc.training_topic(settings)
    registry = Registry(settings)
    window = snapshots.list_manifests(settings, topic)[-settings.snapshot_window:]
    existing = registry.find_run(LOOP_RUN_TAG, loop_run_id)
    if existing is not None:
        tags = registry.run_tags(existing)
        log.info("run %s already trained in MLflow run %s: reusing it", loop_run_id, existing)
        return Candidate.model_validate_json(tags["candidate"])

    df, manifests = snapshots.load_snapshots(settings, topic, [m.snapshot_id for m in window])
    earlier, holdout = uc.holdout_slice(df, settings.holdout_days)
    if len(earlier) < settings.min_training_rows:
        raise InsufficientData(len(earlier), settings.min_training_rows)
    result = uc.train(earlier, settings)
    run_params = {"use_case": uc.name, "epochs_max": settings.epochs, "seed": settings.seed,
                  "holdout_days": settings.holdout_days, "snapshot_window": settings.snapshot_window,
                  "rows_train": len(earlier), "rows_holdout": len(holdout), "best_epoch": result.best_epoch,
                  "contract": result.contract.fingerprint, **(params or {})}
    with registry.start_run(run_name=loop_run_id, params=run_params, tags={LOOP_RUN_TAG: loop_run_id}) as run_id:
        registry.log_lineage(run_id, manifests)
        registry.log_metrics(run_id, {"train_seconds": result.seconds,
                                      **{f"train_{k}": v[-1] for k, v in result.history.items()}})
        model_uri = registry.log_model(run_id, result.model, result.contract.to_dict())
        candidate = Candidate(loop_run_id=loop_run_id, mlflow_run_id=run_id, model_uri=model_uri,
                              contract_fingerprint=result.contract.fingerprint,
                              snapshot_ids=[m.snapshot_id for m in manifests], rows_train=len(earlier),
                              rows_holdout=len(holdout), train_seconds=result.seconds)
        # Tagged last: a run carrying this tag is complete, so a retry may reuse it.
        registry.client().set_tag(run_id, "candidate", candidate.model_dump_json())
    log.info("%s candidate %s trained on %d rows (%d held out) in %.1f s, contract %s, snapshots %s",
             uc.name, run_id, len(earlier), len(holdout), result.seconds, candidate.contract_fingerprint,
             candidate.snapshot_ids)
    return candidate


def evaluate_step(settings: LoopSettings, candidate: Candidate, *, force_reason: str | None = None):
    """Score the challenger and the champion on the same most recent held-out slice and gate them.

    Returns the ``DecisionRecord``, which is logged to the candidate's MLflow run whatever the verdict. A
    retry returns the decision already logged (after a promotion the champion would be the candidate itself).
    """
    from ml.evaluate import DecisionRecord
    from ml.registry import Registry

    uc = usecases.get(settings.use_case)
    registry = Registry(settings)
    logged = registry.decision(candidate.mlflow_run_id)
    if logged is not None:
        log.info("candidate %s already judged by decision %s (%s): reusing it", candidate.mlflow_run_id,
                 logged["decision_id"], logged["verdict"])
        return DecisionRecord.model_validate(logged)
    df, _ = snapshots.load_snapshots(settings, uc.training_topic(settings), candidate.snapshot_ids)
    _, holdout = uc.holdout_slice(df, settings.holdout_days)
    challenger = registry.load_model(candidate.model_uri)
    challenger_contract = uc.load_contract(registry.feature_contract(candidate.mlflow_run_id))
    champion = registry.champion()
    champion_model = registry.load_model(champion.version) if champion else None
    champion_contract = uc.load_contract(champion.feature_contract) if champion else None
    decision = uc.evaluate(challenger, challenger_contract, champion_model, champion_contract, holdout, settings,
                           force_reason=force_reason)
    registry.log_decision(candidate.mlflow_run_id, decision)
    registry.log_metrics(candidate.mlflow_run_id, {f"holdout_{k}": v for k, v in decision.challenger.items()})
    if decision.champion is not None:
        registry.log_metrics(candidate.mlflow_run_id,
                             {f"champion_holdout_{k}": v for k, v in decision.champion.items()})
    return decision


def register_step(settings: LoopSettings, candidate: Candidate, decision) -> int | None:
    """Register the candidate as a model version when the gate promoted it; None (and why) otherwise."""
    from ml.registry import Registry

    if not decision.promote:
        log.info("candidate %s not registered: gate decision %s rejected it (%s)", candidate.mlflow_run_id,
                 decision.decision_id, "; ".join(decision.reasons))
        return None
    return Registry(settings).register(candidate.mlflow_run_id, candidate.model_uri)


def publish_step(settings: LoopSettings, candidate: Candidate, decision, version: int | None):
    """Publish the signed envelope of ``version`` to the model topic, then point ``@champion`` at it.

    Returns the ``PublishResult``, or None when there is nothing to publish (gate rejected). Publishing a
    version that is already the latest on the topic is a no-op.
    """
    from ml import model as model_lib
    from ml.publish import build_envelope, publish
    from ml.registry import Registry

    if version is None:
        log.info("nothing to publish for %s: decision %s was %s", candidate.loop_run_id, decision.decision_id,
                 decision.verdict)
        return None
    registry = Registry(settings)
    artifact = model_lib.to_bytes(registry.load_model(version))
    envelope = build_envelope(
        model_name=settings.model_name, model_version=version, run_id=candidate.mlflow_run_id,
        model_uri=f"models:/{settings.model_name}/{version}",
        feature_contract=registry.feature_contract(candidate.mlflow_run_id),
        metrics=decision.challenger, decision_id=decision.decision_id, artifact=artifact,
        key=settings.signing_key(),
    )
    result = publish(settings, envelope)
    registry.promote(version)
    if result.published:  # a retry that produced nothing keeps the offset of the first publish
        registry.client().set_tag(candidate.mlflow_run_id, "published_offset", str(result.offset))
    return result


def retrain(settings: LoopSettings, loop_run_id: str, *, force_reason: str | None = None) -> Outcome:
    """Run every step in this process and say how it ended (published, rejected, skipped, invalid)."""
    seconds: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] = round(time.perf_counter() - t0, 3)

    manifest = timed("snapshot", snapshot_step, settings, loop_run_id)
    base = {"loop_run_id": loop_run_id, "snapshot_id": manifest.snapshot_id, "seconds": seconds}
    try:
        timed("validate", validate_step, settings, loop_run_id, manifest)
    except InsufficientData as exc:
        return Outcome(status="skipped", reason=str(exc), **base)
    except ValidationFailed as exc:
        return Outcome(status="invalid", reason=str(exc), **base)
    try:
        candidate = timed("train", train_step, settings, loop_run_id)
    except InsufficientData as exc:
        return Outcome(status="skipped", reason=str(exc), **base)
    decision = timed("evaluate", evaluate_step, settings, candidate, force_reason=force_reason)
    version = timed("register", register_step, settings, candidate, decision)
    result = timed("publish", publish_step, settings, candidate, decision, version)
    outcome = Outcome(
        status="published" if result is not None else "rejected", reason="; ".join(decision.reasons),
        mlflow_run_id=candidate.mlflow_run_id, decision_id=decision.decision_id, model_version=version,
        published_offset=result.offset if result is not None else None, **base,
    )
    log.info("%s retraining %s %s: snapshot %s, MLflow run %s, version %s, steps %s", settings.use_case,
             loop_run_id, outcome.status, manifest.snapshot_id, candidate.mlflow_run_id, version, seconds)
    return outcome
