"""Evaluation and the promotion gate: challenger and champion scored on the same most recent rows.

A rejected challenger is data (a DecisionRecord with verdict "reject"), not an exception; only publishing
acts on the record.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Literal

import keras
import numpy as np
import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from ml import features
from ml.settings import LoopSettings

log = logging.getLogger(__name__)

SCORE_BATCH = 16384
# Keeps log loss finite for a model that is certain and wrong.
EPS = 1e-7


def score(model: keras.Model, contract: features.FeatureContract,
          data: pd.DataFrame | list[dict]) -> np.ndarray:
    """P(delayed) per row, float64 (n,); transforms with ``contract`` and predicts in large batches."""
    x = features.transform(contract, data)
    n = len(x[features.NUMERIC_INPUT])
    if n == 0:
        return np.zeros(0)
    parts = [model.predict_on_batch({k: v[i:i + SCORE_BATCH] for k, v in x.items()})
             for i in range(0, n, SCORE_BATCH)]
    return np.concatenate(parts).reshape(-1).astype("float64")


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """roc_auc, log_loss, brier, positive_rate (of labels), mean_prediction and rows.

    Raises ValueError when ``y`` holds a single class (AUC is undefined: the holdout is too small).
    """
    y = np.asarray(y, dtype="int64")
    p = np.clip(np.asarray(p, dtype="float64"), EPS, 1 - EPS)
    if len(np.unique(y)) < 2:
        raise ValueError(f"cannot evaluate on {len(y)} rows holding a single class")
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "positive_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
        "rows": int(len(y)),
    }


def holdout_slice(df: pd.DataFrame, *, fraction: float | None = None,
                  days: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (earlier, holdout): the holdout is the most recent rows by ``sched_dep_utc``.

    Give exactly one of ``fraction`` (of rows) or ``days`` (before the latest departure). Train the
    challenger on the earlier part so neither model has seen the holdout.
    """
    if (fraction is None) == (days is None):
        raise ValueError("give exactly one of fraction or days")
    ordered = df.sort_values("sched_dep_utc", kind="stable")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        cut = len(ordered) - int(round(len(ordered) * fraction))
        return ordered.iloc[:cut], ordered.iloc[cut:]
    start = ordered["sched_dep_utc"].max() - pd.Timedelta(days=days)
    recent = ordered["sched_dep_utc"] > start
    return ordered[~recent], ordered[recent]


class DecisionRecord(BaseModel):
    """One gate decision, kept whatever the verdict (JSON via ``model_dump_json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    verdict: Literal["promote", "reject"]
    reasons: list[str]
    challenger: dict[str, float]
    champion: dict[str, float] | None
    # The flight gate's margins and floors; another use case's gate records its own in ``criteria``.
    auc_margin: float | None = None
    logloss_margin: float | None = None
    min_auc: float | None = None
    max_logloss: float | None = None
    use_case: str = "flight_delay"
    criteria: dict[str, float] = {}
    force_promote: bool = False
    force_reason: str | None = None
    challenger_contract: str | None = None
    champion_contract: str | None = None
    holdout_from: AwareDatetime | None = None
    holdout_to: AwareDatetime | None = None

    @property
    def promote(self) -> bool:
        return self.verdict == "promote"


def gate(challenger: dict[str, float], champion: dict[str, float] | None, settings: LoopSettings, *,
         force_reason: str | None = None, challenger_contract: str | None = None,
         champion_contract: str | None = None, holdout_from: datetime | None = None,
         holdout_to: datetime | None = None) -> DecisionRecord:
    """Decide whether the challenger may replace the champion.

    Promote when the challenger clears the absolute floors (``gate_min_auc``, ``gate_max_logloss``) AND,
    if there is a champion, is not worse than it by more than ``gate_auc_margin`` (AUC) and
    ``gate_logloss_margin`` (log loss). No champion: floors only.

    ``force_reason`` (non-empty) skips the champion comparison, for a changed feature contract under which
    the champion cannot be fairly scored; it is logged at WARNING and recorded. It never skips the floors:
    an absolutely bad model is refused even when forced. Contract fingerprints and holdout bounds are
    copied into the record. Raises ValueError on an empty ``force_reason``.
    """
    if force_reason is not None and not force_reason.strip():
        raise ValueError("force promotion needs a non-empty reason")
    forced = force_reason is not None
    reasons: list[str] = []
    passed = True
    auc, loss = challenger["roc_auc"], challenger["log_loss"]
    if auc < settings.gate_min_auc:
        passed = False
        reasons.append(f"challenger AUC {auc:.4f} is below the floor {settings.gate_min_auc:.4f}")
    if loss > settings.gate_max_logloss:
        passed = False
        reasons.append(f"challenger log loss {loss:.4f} is above the ceiling {settings.gate_max_logloss:.4f}")
    if passed:
        reasons.append(f"challenger clears the floors (AUC {auc:.4f} >= {settings.gate_min_auc:.4f}, "
                       f"log loss {loss:.4f} <= {settings.gate_max_logloss:.4f})")

    if champion is None:
        reasons.append("no champion: floors only")
    elif forced:
        reasons.append(f"champion comparison skipped by force promotion: {force_reason.strip()}")
    else:
        auc_delta = auc - champion["roc_auc"]
        loss_delta = loss - champion["log_loss"]
        auc_ok = auc_delta >= -settings.gate_auc_margin
        loss_ok = loss_delta <= settings.gate_logloss_margin
        passed = passed and auc_ok and loss_ok
        reasons.append(f"AUC {auc:.4f} vs champion {champion['roc_auc']:.4f} (delta {auc_delta:+.4f}, "
                       f"margin {settings.gate_auc_margin:.4f}): {'ok' if auc_ok else 'worse than allowed'}")
        reasons.append(f"log loss {loss:.4f} vs champion {champion['log_loss']:.4f} (delta {loss_delta:+.4f}, "
                       f"margin {settings.gate_logloss_margin:.4f}): {'ok' if loss_ok else 'worse than allowed'}")

    record = DecisionRecord(
        verdict="promote" if passed else "reject", reasons=reasons, challenger=challenger, champion=champion,
        auc_margin=settings.gate_auc_margin, logloss_margin=settings.gate_logloss_margin,
        min_auc=settings.gate_min_auc, max_logloss=settings.gate_max_logloss,
        force_promote=forced, force_reason=force_reason.strip() if forced else None,
        challenger_contract=challenger_contract, champion_contract=champion_contract,
        holdout_from=holdout_from, holdout_to=holdout_to,
    )
    if forced:
        log.warning("FORCE promotion requested (%s): decision %s verdict %s", record.force_reason,
                    record.decision_id, record.verdict)
    log.info("gate decision %s: %s (challenger AUC %.4f log loss %.4f; champion %s): %s", record.decision_id,
             record.verdict, auc, loss,
             "none" if champion is None else f"AUC {champion['roc_auc']:.4f} log loss {champion['log_loss']:.4f}",
             "; ".join(reasons))
    return record


def evaluate_candidates(challenger_model: keras.Model, challenger_contract: features.FeatureContract,
                        champion_model: keras.Model | None,
                        champion_contract: features.FeatureContract | None,
                        holdout_df: pd.DataFrame, settings: LoopSettings, *,
                        force_reason: str | None = None) -> DecisionRecord:
    """Score challenger and champion on the same holdout rows, each with its own contract, then gate.

    Raises ValueError when only one of champion model/contract is given, or the holdout has a single class.
    """
    if (champion_model is None) != (champion_contract is None):
        raise ValueError("give both the champion model and its feature contract, or neither")
    y = holdout_df["delayed"].to_numpy()
    challenger = metrics(y, score(challenger_model, challenger_contract, holdout_df))
    champion = None
    if champion_model is not None:
        champion = metrics(y, score(champion_model, champion_contract, holdout_df))
        start = holdout_df["sched_dep_utc"].min()
        # A champion that trained on holdout rows would look better than it is.
        if pd.Timestamp(champion_contract.fitted_through) >= start:
            log.warning("champion contract %s was fitted on data through %s, overlapping the holdout "
                        "starting %s", champion_contract.fingerprint, champion_contract.fitted_through, start)
    log.info("scored challenger (contract %s) and champion (contract %s) on %d holdout rows",
             challenger_contract.fingerprint, champion_contract.fingerprint if champion_contract else "none",
             len(holdout_df))
    return gate(challenger, champion, settings, force_reason=force_reason,
                challenger_contract=challenger_contract.fingerprint,
                champion_contract=champion_contract.fingerprint if champion_contract else None,
                holdout_from=holdout_df["sched_dep_utc"].min().to_pydatetime(),
                holdout_to=holdout_df["sched_dep_utc"].max().to_pydatetime())
