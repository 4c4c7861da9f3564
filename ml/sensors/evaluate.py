"""Scoring, the threshold choice and the promotion gate of the sensor autoencoder.

Both models are judged on the same most recent readings, each at its own threshold (the one that travelled
with it): precision, recall and F1 of ``score > threshold`` against the labels. A rejected challenger is
data (a ``ml.evaluate.DecisionRecord``), as for flights, so registering and publishing are unchanged.
"""

from __future__ import annotations

import logging
from datetime import datetime

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ml.evaluate import DecisionRecord
from ml.sensors.features import SensorFeatureContract, anomaly_score, transform
from ml.settings import LoopSettings

log = logging.getLogger(__name__)

SCORE_BATCH = 16384
# Without a labelled anomaly in the validation readings, the threshold is this quantile of their scores.
FALLBACK_QUANTILE = 0.99


def score(model: keras.Model, contract: SensorFeatureContract, data: pd.DataFrame | list[dict]) -> np.ndarray:
    """Anomaly score (reconstruction error) per reading, float64 (n,)."""
    x = transform(contract, data)
    if len(x) == 0:
        return np.zeros(0)
    recon = np.concatenate([model.predict_on_batch(x[i:i + SCORE_BATCH]) for i in range(0, len(x), SCORE_BATCH)])
    return anomaly_score(recon, x)


def choose_threshold(y: np.ndarray, scores: np.ndarray) -> tuple[float, str]:
    """The threshold maximising F1 of ``scores > threshold`` on labelled validation readings, and the method.

    The threshold sits halfway between the lowest flagged score and the next one below, so a slightly
    different score on the same reading does not flip it. Without a labelled anomaly, the
    ``FALLBACK_QUANTILE`` of the scores ("quantile"). Raises ValueError on no readings.
    """
    y, scores = np.asarray(y, dtype=bool), np.asarray(scores, dtype="float64")
    if len(scores) == 0:
        raise ValueError("cannot choose a threshold on zero readings")
    if not y.any():
        return max(float(np.quantile(scores, FALLBACK_QUANTILE)), 1e-12), "quantile"
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], y[order]
    tp = np.cumsum(hits)
    flagged = np.arange(1, len(scores) + 1)
    # Only cut where the score changes: ties are flagged together or not at all.
    cut = np.r_[ranked[1:] < ranked[:-1], True]
    f1 = np.where(cut, 2 * tp / (flagged + y.sum()), -1.0)
    k = int(np.argmax(f1))  # the top k + 1 readings are flagged
    below = ranked[k + 1] if k + 1 < len(ranked) else 0.0
    return max(float((ranked[k] + below) / 2), 1e-12), "max_f1"


def metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """precision, recall, f1 at ``threshold``, roc_auc of the scores, threshold, flagged_rate, positive_rate, rows.

    Raises ValueError when ``y`` holds a single class (recall or precision is undefined).
    """
    y = np.asarray(y, dtype=bool)
    if len(np.unique(y)) < 2:
        raise ValueError(f"cannot evaluate on {len(y)} readings holding a single class")
    flagged = np.asarray(scores) > threshold
    tp = float(np.sum(flagged & y))
    precision = tp / flagged.sum() if flagged.any() else 0.0
    recall = tp / y.sum()
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "roc_auc": float(roc_auc_score(y, scores)), "threshold": float(threshold),
            "flagged_rate": float(flagged.mean()), "positive_rate": float(y.mean()), "rows": int(len(y))}


def gate(challenger: dict[str, float], champion: dict[str, float] | None, settings: LoopSettings, *,
         force_reason: str | None = None, challenger_contract: str | None = None,
         champion_contract: str | None = None, holdout_from: datetime | None = None,
         holdout_to: datetime | None = None) -> DecisionRecord:
    """Decide whether the challenger may replace the champion.

    Promote when the challenger's precision and recall clear ``gate_min_precision`` / ``gate_min_recall``
    AND, if there is a champion, its F1 is at most ``gate_f1_margin`` below the champion's. ``force_reason``
    skips the comparison (never the floors), as in ``ml.evaluate.gate``. Raises ValueError on an empty
    ``force_reason``.
    """
    if force_reason is not None and not force_reason.strip():
        raise ValueError("force promotion needs a non-empty reason")
    forced = force_reason is not None
    p, r, f1 = challenger["precision"], challenger["recall"], challenger["f1"]
    reasons: list[str] = []
    passed = True
    if p < settings.gate_min_precision:
        passed = False
        reasons.append(f"challenger precision {p:.4f} is below the floor {settings.gate_min_precision:.4f}")
    if r < settings.gate_min_recall:
        passed = False
        reasons.append(f"challenger recall {r:.4f} is below the floor {settings.gate_min_recall:.4f}")
    if passed:
        reasons.append(f"challenger clears the floors (precision {p:.4f} >= {settings.gate_min_precision:.4f}, "
                       f"recall {r:.4f} >= {settings.gate_min_recall:.4f})")
    if champion is None:
        reasons.append("no champion: floors only")
    elif forced:
        reasons.append(f"champion comparison skipped by force promotion: {force_reason.strip()}")
    else:
        delta = f1 - champion["f1"]
        ok = delta >= -settings.gate_f1_margin
        passed = passed and ok
        reasons.append(f"F1 {f1:.4f} (precision {p:.4f}, recall {r:.4f}) vs champion {champion['f1']:.4f} "
                       f"(precision {champion['precision']:.4f}, recall {champion['recall']:.4f}): delta "
                       f"{delta:+.4f}, margin {settings.gate_f1_margin:.4f}: {'ok' if ok else 'worse than allowed'}")
    record = DecisionRecord(
        verdict="promote" if passed else "reject", reasons=reasons, challenger=challenger, champion=champion,
        use_case="sensor_anomaly",
        criteria={"f1_margin": settings.gate_f1_margin, "min_precision": settings.gate_min_precision,
                  "min_recall": settings.gate_min_recall},
        force_promote=forced, force_reason=force_reason.strip() if forced else None,
        challenger_contract=challenger_contract, champion_contract=champion_contract,
        holdout_from=holdout_from, holdout_to=holdout_to,
    )
    if forced:
        log.warning("FORCE promotion requested (%s): decision %s verdict %s", record.force_reason,
                    record.decision_id, record.verdict)
    log.info("gate decision %s: %s (challenger P %.4f R %.4f F1 %.4f; champion %s): %s", record.decision_id,
             record.verdict, p, r, f1, "none" if champion is None else f"F1 {champion['f1']:.4f}",
             "; ".join(reasons))
    return record


def holdout_slice(df: pd.DataFrame, *, days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(earlier, holdout): the holdout is the readings of the last ``days`` before the latest ``ts``."""
    ordered = df.sort_values(["ts", "machine_id"], kind="stable", ignore_index=True)
    recent = ordered["ts"] > ordered["ts"].max() - pd.Timedelta(days=days)
    return ordered[~recent], ordered[recent]


def evaluate_candidates(challenger_model: keras.Model, challenger_contract: SensorFeatureContract,
                        champion_model: keras.Model | None, champion_contract: SensorFeatureContract | None,
                        holdout_df: pd.DataFrame, settings: LoopSettings, *,
                        force_reason: str | None = None) -> DecisionRecord:
    """Score challenger and champion on the same holdout readings, each with its own contract and threshold,
    then gate.

    Raises ValueError when only one of champion model/contract is given, a contract has no threshold, or the
    holdout holds a single class.
    """
    if (champion_model is None) != (champion_contract is None):
        raise ValueError("give both the champion model and its feature contract, or neither")
    y = holdout_df["is_anomaly"].to_numpy(dtype=bool)

    def judged(model: keras.Model, contract: SensorFeatureContract) -> dict[str, float]:
        if contract.threshold is None:
            raise ValueError(f"sensor feature contract {contract.fingerprint} carries no threshold")
        return metrics(y, score(model, contract, holdout_df), contract.threshold)

    challenger = judged(challenger_model, challenger_contract)
    champion = judged(champion_model, champion_contract) if champion_model is not None else None
    log.info("scored challenger (contract %s) and champion (contract %s) on %d holdout readings (%d anomalous)",
             challenger_contract.fingerprint, champion_contract.fingerprint if champion_contract else "none",
             len(holdout_df), int(y.sum()))
    return gate(challenger, champion, settings, force_reason=force_reason,
                challenger_contract=challenger_contract.fingerprint,
                champion_contract=champion_contract.fingerprint if champion_contract else None,
                holdout_from=holdout_df["ts"].min().to_pydatetime(),
                holdout_to=holdout_df["ts"].max().to_pydatetime())
