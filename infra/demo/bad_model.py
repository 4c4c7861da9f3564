"""The demo's scripted bad-but-valid version: the flight model trained on the latest snapshot window with its
labels shuffled, judged by the real gate (force-promoted, so the champion comparison is skipped and only the
floors speak, which it fails), registered and published past the gate by hand through the signed path an
operator's rollback uses. Every check of the scorer passes (it is a valid, signed model of the right shape), and
only its live metric shows it is bad: what the monitor must catch and roll back."""

from __future__ import annotations

import logging

import numpy as np

from ml import snapshot as snapshots, use_cases
from ml.pipeline import LOOP_RUN_TAG, Candidate, evaluate_step, republish_step, split
from ml.registry import Registry
from ml.settings import LoopSettings

log = logging.getLogger(__name__)


def publish_bad_version(settings: LoopSettings, run_name: str) -> int:
    """Train, gate, register and publish the shuffled-label model as the champion; returns its version."""
    uc = use_cases.selected(settings)
    registry = Registry(settings)
    window = snapshots.list_manifests(settings, settings.topic(uc.topics.labels))[-settings.snapshot_window:]
    rows, manifests = snapshots.load_snapshots(settings, settings.topic(uc.topics.labels), uc.label_contract,
                                               [m.snapshot_id for m in window])
    earlier, holdout = split(settings, uc, rows)
    shuffled = earlier.assign(**{uc.label: np.random.default_rng(settings.seed).permutation(
        earlier[uc.label].to_numpy())})
    result = uc.train(shuffled, settings)
    with registry.start_run(run_name=run_name, params={"scripted": "labels shuffled (demo)"},
                            tags={LOOP_RUN_TAG: run_name}) as run_id:
        registry.log_lineage(run_id, manifests)
        model_uri = registry.log_model(run_id, result.model, result.preprocessing.to_dict())
    candidate = Candidate(loop_run_id=run_name, mlflow_run_id=run_id, model_uri=model_uri,
                          preprocessing_fingerprint=result.preprocessing.fingerprint,
                          snapshot_ids=[m.snapshot_id for m in manifests], rows_train=len(earlier),
                          rows_holdout=len(holdout), train_seconds=result.seconds)
    decision = evaluate_step(settings, candidate, force_reason="scripted bad-but-valid model of the demo "
                                                               "(labels shuffled)")
    version = registry.register(run_id, model_uri)
    result = republish_step(settings, version)
    log.warning("published the scripted bad version v%d past the gate (decision %s: %s) at %s[%s]@%s", version,
                decision.decision_id, decision.verdict, result.topic, result.partition, result.offset)
    return version
