"""The retraining steps: one function per Airflow task, each passing small typed references, never data.

    snapshot -> validate -> train -> evaluate -> register -> publish

The steps are the same for every use case: what differs (labels topic and contract, suite, label, time order,
training, evaluation, gate criteria) comes from the use case the settings select (``ml.use_cases``).

Every step is safe to retry with the same ``loop_run_id`` (the Airflow run id): the snapshot of that id is
reused, a finished training run tagged with it is reused, registering a run twice returns its version, and
publishing a version already on the model topic is a no-op. ``retrain`` chains the steps in one process
(the CLI and the benchmark use it; the DAG calls the steps one by one).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from ml import snapshot as snapshots, use_cases
from ml.contracts import arrow_schema
from ml.errors import AlreadySnapshotted, InsufficientData, LoopError, ValidationFailed
from ml.new_records import Announcement
from ml.settings import LoopSettings
from ml.split import time_split
from ml.use_cases import UseCase

if TYPE_CHECKING:
    from ml.bootstrap import Interval
    from ml.preprocessing import Preprocessing

log = logging.getLogger(__name__)

LOOP_RUN_TAG = "loop_run_id"


class Candidate(BaseModel):
    """A trained challenger, logged in MLflow but not yet judged."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    loop_run_id: str
    mlflow_run_id: str
    model_uri: str
    preprocessing_fingerprint: str
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
    stage: Literal["champion", "shadow"] | None = None  # published: as the champion or in shadow
    seconds: dict[str, float] = {}


def snapshot_id_for(loop_run_id: str) -> str:
    """A snapshot id derived from the run id (Airflow run ids contain ':' and '+', which paths avoid)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", loop_run_id)


def snapshot_step(settings: LoopSettings, loop_run_id: str, announced: Announcement | None = None):
    """Snapshot the use case's labels topic from the previous snapshot's end to the current end offsets.

    Returns the ``SnapshotManifest``; a retry of the same run returns the same manifest. ``announced``: the new
    records whose announcement started the run; the snapshot records it and covers them (else LoopError), unless
    another run's snapshot read them first (AlreadySnapshotted: nothing new to train on).
    """
    uc = use_cases.selected(settings)
    topic = settings.topic(uc.topics.labels)
    snapshot_id = snapshot_id_for(loop_run_id)
    done = snapshots.list_manifests(settings, topic)
    if announced is not None and done and all(m.snapshot_id != snapshot_id for m in done) \
            and announced.covered_by(done[-1].end_offsets):
        raise AlreadySnapshotted(f"the records announced by {announced.announcement_id} ({announced.records}) are "
                                 f"in snapshot {done[-1].snapshot_id} already: nothing new for run {loop_run_id}")
    manifest = snapshots.take_snapshot(settings, topic, uc.label_contract, snapshot_id=snapshot_id,
                                       triggered_by=announced.announcement_id if announced else None)
    if announced is not None:
        if not announced.covered_by(manifest.end_offsets):
            raise LoopError(f"snapshot {manifest.snapshot_id} of {topic} ends at {manifest.end_offsets}, before "
                            f"the records announced by {announced.announcement_id} ({announced.ranges})")
        log.info("run %s started by announcement %s: %d new records of %s, all in snapshot %s", loop_run_id,
                 announced.announcement_id, announced.records, topic, manifest.snapshot_id)
    return manifest


def _load(settings: LoopSettings, uc: UseCase, snapshot_ids: list[str], **read):
    return snapshots.load_snapshots(settings, settings.topic(uc.topics.labels), uc.label_contract, snapshot_ids,
                                    **read)


@dataclass(frozen=True)
class _Cut:
    """Where ``split`` cuts snapshots' rows: Parquet filters of its two parts, their sizes, the manifests."""

    earlier: pc.Expression
    holdout: pc.Expression
    before: int
    held_out: int
    manifests: list[snapshots.SnapshotManifest]


def _holdout_cut(settings: LoopSettings, uc: UseCase, snapshot_ids: list[str]) -> _Cut:
    """``split``'s cut of the snapshots' rows, found from their time and label columns alone."""
    time_column = uc.time_order[0]
    keys, manifests = _load(settings, uc, snapshot_ids, columns=list(dict.fromkeys([time_column, uc.label])))
    times = keys.loc[keys[uc.label].notna(), time_column]
    has_label = pc.field(uc.label).is_valid()
    if times.empty:
        return _Cut(has_label, has_label, 0, 0, manifests)  # no labelled row: both parts are empty
    cut = times.max() - pd.Timedelta(days=settings.holdout_days)
    at = pa.scalar(cut, type=arrow_schema(uc.label_contract).field(time_column).type)
    held_out = int((times > cut).sum())
    return _Cut((pc.field(time_column) <= at) & has_label, (pc.field(time_column) > at) & has_label,
                len(times) - held_out, held_out, manifests)


def holdout_rows(settings: LoopSettings, uc: UseCase, snapshot_ids: list[str]) -> pd.DataFrame:
    """The holdout of the snapshots' rows (``split``'s second part, in its order) without reading the rest: only the
    rows past the cut are read (Parquet row groups before it are skipped)."""
    rows, _ = _load(settings, uc, snapshot_ids, filters=_holdout_cut(settings, uc, snapshot_ids).holdout)
    return split(settings, uc, rows)[1]


def earlier_rows(settings: LoopSettings, uc: UseCase, snapshot_ids: list[str]
                 ) -> tuple[snapshots.SnapshotRows, int, list[snapshots.SnapshotManifest]]:
    """``split``'s first part of the snapshots' rows as ``SnapshotRows`` (read on demand, in file order: a use
    case's training orders them itself), the size of its second part, and the manifests. Nothing but the time
    and label columns is read here, and the holdout's rows are never read."""
    cut = _holdout_cut(settings, uc, snapshot_ids)
    rows = snapshots.SnapshotRows(settings, settings.topic(uc.topics.labels), uc.label_contract, cut.manifests,
                                  filters=cut.earlier, count=cut.before)
    return rows, cut.held_out, cut.manifests


def labelled(uc: UseCase, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows that carry the use case's label: only they can train or judge a model."""
    kept = rows[rows[uc.label].notna()]
    if len(kept) < len(rows):
        log.info("%s: %d of %d rows have no %s and are left out", uc.name, len(rows) - len(kept), len(rows), uc.label)
    return kept


def split(settings: LoopSettings, uc: UseCase, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(earlier, holdout) of the labelled rows: the holdout is their last ``holdout_days``."""
    return time_split(labelled(uc, rows), uc.time_order, days=settings.holdout_days)


def training_rows(settings: LoopSettings, uc: UseCase, version: int, lineage: list[dict], *,
                  columns: list[str] | None = None, sample: int | None = None) -> pd.DataFrame | None:
    """The training rows of ``version`` (its ``lineage`` snapshots that are still on disk; only ``columns`` of
    them when given; about ``sample`` of them drawn from ``settings.seed`` when given, read in batches), or None:
    the reference of input drift, for the validation of a new snapshot and for the live monitor."""
    topic = settings.topic(uc.topics.labels)
    ids = [m["snapshot_id"] for m in lineage if "snapshot_id" in m]
    available = {m.snapshot_id for m in snapshots.list_manifests(settings, topic)}
    present = [i for i in ids if i in available]
    if not present:
        log.warning("v%d was trained on snapshots %s that are not under %s: drift not computed", version, ids,
                    settings.snapshot_dir)
        return None
    if sample is not None:
        rows = snapshots.SnapshotRows(settings, topic, uc.label_contract,
                                      snapshots.manifests_of(settings, topic, present))
        return rows.sample(sample, settings.seed, columns)
    df, _ = _load(settings, uc, present, columns=columns)
    return df


def _champion_training_data(settings: LoopSettings, uc: UseCase, registry, columns: list[str] | None = None):
    """The champion's training rows (only ``columns`` when given), or None (no champion, or its snapshots are
    gone)."""
    champion = registry.champion()
    return None if champion is None else training_rows(settings, uc, champion.version, champion.lineage,
                                                       columns=columns)


def validate_step(settings: LoopSettings, loop_run_id: str, manifest):
    """Validate the new snapshot against its use case's suite, with drift against the champion's training data.

    Returns the ``ValidationReport``. Raises InsufficientData (skip the run) or ValidationFailed (the report
    says which expectation failed on how many rows); Data Docs are written either way.
    """
    from ml.registry import Registry
    from ml.validation import validate_snapshot

    if manifest.row_count == 0:
        raise InsufficientData(0, settings.min_training_rows)
    uc = use_cases.selected(settings)
    topic = settings.topic(uc.topics.labels)
    suite = uc.validation_suite()
    rows = snapshots.SnapshotRows(settings, topic, uc.label_contract, snapshots.manifests_of(
        settings, topic, [manifest.snapshot_id]))
    columns = None if suite.reference_columns is None else list(suite.reference_columns)
    reference = _champion_training_data(settings, uc, Registry(settings), columns)
    return validate_snapshot(rows, settings, run_id=snapshot_id_for(loop_run_id), reference=reference,
                             rejected=manifest.rejected_count, suite=suite)


def train_step(settings: LoopSettings, loop_run_id: str, *, params: dict | None = None) -> Candidate:
    """Train a challenger on the snapshot window minus the most recent ``holdout_days``; log it in MLflow.

    The MLflow run holds the parameters, training metrics, the window's snapshot manifests (exact Kafka
    offsets) and the model with its fitted preprocessing. A retry reuses a finished run of the same loop run.
    """
    from ml.registry import Registry

    uc = use_cases.selected(settings)
    registry = Registry(settings)
    window = snapshots.list_manifests(settings, settings.topic(uc.topics.labels))[-settings.snapshot_window:]
    existing = registry.find_run(LOOP_RUN_TAG, loop_run_id)
    if existing is not None:
        tags = registry.run_tags(existing)
        log.info("run %s already trained in MLflow run %s: reusing it", loop_run_id, existing)
        return Candidate.model_validate_json(tags["candidate"])

    earlier, holdout, manifests = earlier_rows(settings, uc, [m.snapshot_id for m in window])
    if earlier.count < settings.min_training_rows:
        raise InsufficientData(earlier.count, settings.min_training_rows)
    result = uc.train_snapshot(earlier, settings)
    run_params = {"use_case": uc.name, "epochs_max": settings.epochs, "seed": settings.seed,
                  "holdout_days": settings.holdout_days, "snapshot_window": settings.snapshot_window,
                  "rows_train": earlier.count, "rows_holdout": holdout, "best_epoch": result.best_epoch,
                  "preprocessing": result.preprocessing.fingerprint, **(params or {})}
    with registry.start_run(run_name=loop_run_id, params=run_params, tags={LOOP_RUN_TAG: loop_run_id}) as run_id:
        registry.log_lineage(run_id, manifests)
        registry.log_metrics(run_id, {"train_seconds": result.seconds,
                                      **{f"train_{k}": v[-1] for k, v in result.history.items()}})
        model_uri = registry.log_model(run_id, result.model, result.preprocessing.to_dict())
        candidate = Candidate(loop_run_id=loop_run_id, mlflow_run_id=run_id, model_uri=model_uri,
                              preprocessing_fingerprint=result.preprocessing.fingerprint,
                              snapshot_ids=[m.snapshot_id for m in manifests], rows_train=earlier.count,
                              rows_holdout=holdout, train_seconds=result.seconds)
        # Tagged last: a run carrying this tag is complete, so a retry may reuse it.
        registry.client().set_tag(run_id, "candidate", candidate.model_dump_json())
    log.info("%s candidate %s trained on %d rows (%d held out) in %.1f s, preprocessing %s, snapshots %s",
             uc.name, run_id, earlier.count, holdout, result.seconds, candidate.preprocessing_fingerprint,
             candidate.snapshot_ids)
    return candidate


@dataclass(frozen=True)
class Scored:
    """One model judged on labelled rows: its preprocessing, its metrics and, when the use case gives metric
    functions, its per-row scores (what an interval of a metric's difference is computed from)."""

    preprocessing: Preprocessing
    metrics: dict[str, float]
    scores: np.ndarray | None = None


def score_model(uc: UseCase, model, preprocessing: Preprocessing, rows: pd.DataFrame) -> Scored:
    """``model``'s metrics on labelled ``rows``, scoring each row once for the metrics and for the interval."""
    if not uc.metric_functions(preprocessing):
        return Scored(preprocessing, uc.evaluate(model, preprocessing, rows))
    scores = uc.scores(model, preprocessing, rows)
    return Scored(preprocessing, uc.evaluate(model, preprocessing, rows, scores=scores), scores)


def gate_intervals(settings: LoopSettings, uc: UseCase, criteria, rows: pd.DataFrame, challenger: Scored,
                   champion: Scored) -> dict[str, Interval]:
    """Metric -> the ``settings.gate_ci_level`` interval of challenger minus champion on ``rows`` (a paired
    bootstrap of ``settings.gate_bootstrap_samples`` resamples, seeded by ``settings.seed``), for each criterion
    with a margin whose metric both models' metric functions compute, all on the same resamples. Empty when
    ``settings.gate_interval`` is off, a model has no scores, or the rows are too few for an interval (logged at
    WARNING): the gate then compares point values."""
    from ml.bootstrap import paired_bootstraps

    if not settings.gate_interval or challenger.scores is None or champion.scores is None:
        return {}
    ours, theirs = uc.metric_functions(challenger.preprocessing), uc.metric_functions(champion.preprocessing)
    judged = [c.metric for c in criteria if c.margin is not None and c.metric in ours and c.metric in theirs]
    if not judged:
        return {}
    started = time.perf_counter()
    try:
        intervals = paired_bootstraps(
            rows[uc.label].to_numpy(), challenger.scores, champion.scores, {k: ours[k] for k in judged},
            champion_metrics={k: theirs[k] for k in judged}, samples=settings.gate_bootstrap_samples,
            level=settings.gate_ci_level, seed=settings.seed)
    except ValueError as e:  # too few rows of a class for any resample to define a metric
        log.warning("no gate interval on %d rows: %s; the gate compares point values", len(rows), e)
        return {}
    log.info("gate intervals on %d rows, %d resamples, in %.2f s: %s", len(rows), settings.gate_bootstrap_samples,
             time.perf_counter() - started, ", ".join(f"{k} {v.describe()}" for k, v in intervals.items()) or "none")
    return intervals


def evaluate_step(settings: LoopSettings, candidate: Candidate, *, force_reason: str | None = None,
                  gate_margins: dict[str, float] | None = None, trigger: str | None = None):
    """Score the challenger and the champion on the same most recent held-out rows and gate them with the use
    case's criteria (``gate_margins``: this run's margins by metric, over the use case's), with a confidence
    interval of each margin metric's difference unless ``settings.gate_interval`` is off (``gate_intervals``).
    ``trigger``: why the run started, recorded in the decision.

    Returns the ``DecisionRecord``, which is logged to the candidate's MLflow run whatever the verdict (the
    intervals' bounds also as metrics ``holdout_<metric>_diff_low`` / ``_diff_high``). A retry returns the
    decision already logged (after a promotion the champion would be the candidate itself).
    """
    from ml.gate import DecisionRecord, decide
    from ml.registry import Registry

    uc = use_cases.selected(settings)
    registry = Registry(settings)
    logged = registry.decision(candidate.mlflow_run_id)
    if logged is not None:
        log.info("candidate %s already judged by decision %s (%s): reusing it", candidate.mlflow_run_id,
                 logged["decision_id"], logged["verdict"])
        return DecisionRecord.model_validate(logged)
    criteria = uc.gate_criteria(gate_margins)
    holdout = holdout_rows(settings, uc, candidate.snapshot_ids)
    challenger = uc.load_preprocessing(registry.preprocessing(candidate.mlflow_run_id))
    challenger_scored = score_model(uc, registry.load_predictor(candidate.model_uri), challenger, holdout)
    champion = registry.champion()
    champion_preprocessing, champion_scored, intervals = None, None, {}
    start = holdout[uc.time_order[0]].min()
    if champion is not None:
        try:
            champion_preprocessing = uc.load_preprocessing(champion.preprocessing)
        except ValueError as e:  # fitted by another version of the code (a changed feature set)
            if force_reason is None:
                raise ValueError(f"champion v{champion.version}'s preprocessing cannot be read by this code ({e}); "
                                 "it cannot be compared: run with force_promote and a force_reason to replace "
                                 "it") from e
            log.warning("champion v%d's preprocessing cannot be read by this code (%s): judged on floors only, "
                        "forced (%s)", champion.version, e, force_reason)
            champion = None
    if champion is not None:
        champion_scored = score_model(uc, registry.load_predictor(champion.version), champion_preprocessing, holdout)
        intervals = gate_intervals(settings, uc, criteria, holdout, challenger_scored, champion_scored)
        # A champion that trained on holdout rows would look better than it is.
        if pd.Timestamp(champion_preprocessing.fitted_through) >= start:
            log.warning("champion v%d was fitted on rows through %s, overlapping the holdout starting %s",
                        champion.version, champion_preprocessing.fitted_through, start)
    log.info("scored challenger (preprocessing %s) and champion %s on %d holdout rows", challenger.fingerprint,
             f"v{champion.version} (preprocessing {champion_preprocessing.fingerprint})" if champion else "none",
             len(holdout))
    decision = decide(uc.name, criteria, challenger_scored.metrics,
                      champion_scored.metrics if champion_scored else None, force_reason=force_reason,
                      challenger_preprocessing=challenger.fingerprint,
                      champion_preprocessing=champion_preprocessing.fingerprint if champion else None,
                      holdout_from=start.to_pydatetime(),
                      holdout_to=holdout[uc.time_order[0]].max().to_pydatetime(), intervals=intervals,
                      trigger=trigger)
    registry.log_decision(candidate.mlflow_run_id, decision)
    registry.log_metrics(candidate.mlflow_run_id, {f"holdout_{k}": v for k, v in decision.challenger.items()})
    if decision.champion is not None:
        registry.log_metrics(candidate.mlflow_run_id,
                             {f"champion_holdout_{k}": v for k, v in decision.champion.items()})
    if decision.intervals:
        registry.log_metrics(candidate.mlflow_run_id, {
            f"holdout_{k}_diff{suffix}": value for k, iv in decision.intervals.items()
            for suffix, value in (("", iv.point), ("_low", iv.low), ("_high", iv.high))})
    return decision


def register_step(settings: LoopSettings, candidate: Candidate, decision) -> int | None:
    """Register the candidate as a model version when the gate promoted it; None (and why) otherwise."""
    from ml.registry import Registry

    if not decision.promote:
        log.info("candidate %s not registered: gate decision %s rejected it (%s)", candidate.mlflow_run_id,
                 decision.decision_id, "; ".join(decision.reasons))
        return None
    return Registry(settings).register(candidate.mlflow_run_id, candidate.model_uri)


def publish_step(settings: LoopSettings, candidate: Candidate, decision, version: int | None,
                 stage: Literal["champion", "shadow"] = "champion"):
    """Publish the signed envelope of ``version`` to the model topic as ``stage``, then point ``@champion`` at it
    (a shadow: ``@shadow``; the champion stays, until the shadow is promoted: ``promote_shadow_step``).

    Returns the ``PublishResult``, or None when there is nothing to publish (gate rejected). Publishing a
    version that is already the latest of its stage on the topic is a no-op.
    """
    from ml.publish import publish
    from ml.registry import Registry

    if version is None:
        log.info("nothing to publish for %s: decision %s was %s", candidate.loop_run_id, decision.decision_id,
                 decision.verdict)
        return None
    registry = Registry(settings)
    result = publish(settings, version_envelope(settings, registry, version, candidate.mlflow_run_id,
                                                decision.challenger, decision.decision_id, stage))
    if stage == "shadow":
        registry.mark_shadow(version)
    else:
        registry.promote(version)
    if result.published:  # a retry that produced nothing keeps the offset of the first publish
        registry.client().set_tag(candidate.mlflow_run_id, "published_offset", str(result.offset))
    return result


def version_envelope(settings: LoopSettings, registry, version: int, run_id: str, metrics: dict[str, float],
                     decision_id: str, stage: Literal["champion", "shadow"] = "champion"):
    """The signed envelope of the registered ``version`` (trained in MLflow run ``run_id``, judged by
    ``decision_id`` with the challenger's ``metrics``) for ``stage``: its model archive as registered, byte for
    byte, and its preprocessing, read from MLflow."""
    from ml.publish import build_envelope

    return build_envelope(model_name=settings.model_name, model_version=version, run_id=run_id,
                          model_uri=f"models:/{settings.model_name}/{version}",
                          preprocessing=registry.preprocessing(run_id), metrics=metrics, decision_id=decision_id,
                          artifact=registry.model_archive(version), signer=settings.signer(), stage=stage)


def republish_step(settings: LoopSettings, version: int):
    """Publish the registered ``version`` again as the champion and point ``@champion`` at it: a rollback (the
    scorers take the newest envelope, whatever its version). Rebuilt from MLflow and signed now: the compacted
    topic may no longer hold the old record. Returns the ``PublishResult``; raises LoopError when the version has
    no gate decision in MLflow."""
    from ml.publish import publish
    from ml.registry import Registry

    registry = Registry(settings)
    run_id = registry.client().get_model_version(registry.name, str(version)).run_id
    decision = registry.decision(run_id)
    if decision is None:
        raise LoopError(f"{registry.name} v{version} (run {run_id}) has no gate decision in MLflow: not republished")
    result = publish(settings, version_envelope(settings, registry, version, run_id, decision["challenger"],
                                                decision["decision_id"]))
    registry.promote(version)
    return result


def promote_shadow_step(settings: LoopSettings, version: int):
    """Make the shadow ``version`` the champion (``ml.publish.promote_shadow``: signed anew as a champion with the
    same artifact, published, the shadow key retired), then point ``@champion`` at it and drop ``@shadow``.
    Returns the ``PublishResult``; raises LoopError when ``version`` is not the shadow (nor the champion)."""
    from ml.publish import promote_shadow
    from ml.registry import Registry

    result = promote_shadow(settings, version)
    registry = Registry(settings)
    registry.promote(version)
    registry.clear_shadow()
    return result


def retire_shadow_step(settings: LoopSettings, reason: str = ""):
    """Retire the model's shadow (``ml.publish.retire_shadow``: a tombstone on its shadow key, ``reason`` in its
    header) and drop ``@shadow``. Returns the ``RetireResult``."""
    from ml.publish import retire_shadow
    from ml.registry import Registry

    result = retire_shadow(settings, settings.model_name, reason=reason)
    Registry(settings).clear_shadow()
    return result


def retrain(settings: LoopSettings, loop_run_id: str, *, force_reason: str | None = None,
            gate_margins: dict[str, float] | None = None, shadow: bool | None = None,
            trigger: str | None = None) -> Outcome:
    """Run every step in this process and say how it ended (published, rejected, skipped, invalid). ``shadow``:
    publish a promoted candidate in shadow (None: ``settings.shadow_first``). ``trigger``: why the run started,
    recorded in the gate's decision."""
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
    decision = timed("evaluate", evaluate_step, settings, candidate, force_reason=force_reason,
                     gate_margins=gate_margins, trigger=trigger)
    version = timed("register", register_step, settings, candidate, decision)
    stage = "shadow" if (settings.shadow_first if shadow is None else shadow) else "champion"
    result = timed("publish", publish_step, settings, candidate, decision, version, stage)
    outcome = Outcome(
        status="published" if result is not None else "rejected", reason="; ".join(decision.reasons),
        mlflow_run_id=candidate.mlflow_run_id, decision_id=decision.decision_id, model_version=version,
        published_offset=result.offset if result is not None else None,
        stage=stage if result is not None else None, **base,
    )
    log.info("%s retraining %s %s: snapshot %s, MLflow run %s, version %s, steps %s", settings.use_case,
             loop_run_id, outcome.status, manifest.snapshot_id, candidate.mlflow_run_id, version, seconds)
    return outcome
