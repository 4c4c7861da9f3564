"""What the monitor decides from live metrics, as pure functions returning decision records (or None).

- **Rollback**: the serving version's metric on a window's labelled events is worse than the previous version's
  on the same events (scored again) by more than ``rollback_margin``, or the window's metric is worse than
  ``rollback_floor``: the previous version is published again.
- **Retrain**: the serving version's window metric is worse than its own gate-time (held-out) value by more
  than ``retrain_margin``, or an input feature's PSI against its training data passes ``drift_threshold``.
- **Shadow**: after ``shadow_window_events`` events scored by both and labelled, the shadow is promoted when its
  metric on those events is not worse than the champion's by more than ``shadow_margin``, else retired.

Rollback wins over retraining: a version that breaches its SLO is taken out first.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Action = Literal["rollback", "retrain", "promote_shadow", "retire_shadow"]


class MonitorPolicy(BaseModel):
    """The thresholds of the monitor's decisions, in the units of the use case's live metric."""

    model_config = ConfigDict(frozen=True)

    rollback_margin: float = Field(0.05, ge=0)
    rollback_floor: float | None = None
    retrain_margin: float = Field(0.03, ge=0)
    drift_threshold: float = Field(0.25, gt=0)
    shadow_margin: float = Field(0.0, ge=0)


class MonitorDecision(BaseModel):
    """One action the monitor took or asked for, with the evidence: kept in the decision log and in MLflow."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    decision_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    use_case: str
    action: Action
    model_version: int = Field(description="the version acted on (rolled back, shadow decided, retrained from)")
    target_version: int | None = Field(None, description="rollback: the version published again")
    metric: str
    value: float = Field(description="the acted-on version's live metric on the window judged")
    reference: float | None = Field(None, description="what it was compared with")
    events: int = Field(description="labelled events the judged window holds")
    reason: str
    drift: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """The serving version and the previous one on the same labelled events of a window: the serving version's
    recorded scores, the previous version's scores of the same rows."""

    previous_version: int
    value: float
    previous_value: float
    events: int


def worse_by(value: float, reference: float, higher_is_better: bool) -> float:
    """How much worse ``value`` is than ``reference`` (negative: better)."""
    return reference - value if higher_is_better else value - reference


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.4f}"


def judge_serving(policy: MonitorPolicy, *, use_case: str, metric: str, higher_is_better: bool, version: int,
                  value: float, events: int, previous_version: int | None, comparison: Comparison | None,
                  gate_value: float | None, drift: dict[str, float]) -> MonitorDecision | None:
    """Rollback or retrain for the serving ``version`` given one closed window's ``value``; None when it holds.

    ``comparison``: the version and ``previous_version`` on the same events of the window (None when they could
    not be compared: only the floor applies to a rollback); ``gate_value``: the version's held-out value at its
    gate. A NaN window decides nothing.
    """
    if math.isnan(value):
        return None
    base = dict(use_case=use_case, metric=metric, model_version=version, drift=drift)
    direction = "higher" if higher_is_better else "lower"
    if comparison is not None and comparison.previous_version == previous_version \
            and not (math.isnan(comparison.value) or math.isnan(comparison.previous_value)) \
            and worse_by(comparison.value, comparison.previous_value, higher_is_better) > policy.rollback_margin:
        c = comparison
        return MonitorDecision(action="rollback", target_version=c.previous_version, value=c.value,
                               reference=c.previous_value, events=c.events,
                               reason=f"live {metric} {_fmt(c.value)} of v{version} is worse than "
                                      f"v{c.previous_version}'s {_fmt(c.previous_value)} on the same {c.events} "
                                      f"labelled events by more than {policy.rollback_margin} ({direction} is "
                                      "better)", **base)
    base.update(value=value, events=events)
    if previous_version is not None and policy.rollback_floor is not None \
            and worse_by(value, policy.rollback_floor, higher_is_better) > 0:
        return MonitorDecision(action="rollback", target_version=previous_version, reference=policy.rollback_floor,
                               reason=f"live {metric} {_fmt(value)} of v{version} over {events} labelled events "
                                      f"is past the floor {policy.rollback_floor}", **base)
    if gate_value is not None and worse_by(value, gate_value, higher_is_better) > policy.retrain_margin:
        return MonitorDecision(action="retrain", reference=gate_value,
                               reason=f"live {metric} {_fmt(value)} of v{version} over {events} labelled events fell "
                                      f"below its gate-time {_fmt(gate_value)} by more than {policy.retrain_margin}",
                               **base)
    drifted = {f: v for f, v in drift.items() if v > policy.drift_threshold}
    if drifted:
        worst = max(drifted, key=drifted.get)
        return MonitorDecision(action="retrain", reference=gate_value,
                               reason=f"input drift on v{version}: PSI of {worst} is {drifted[worst]:.3f} (threshold "
                                      f"{policy.drift_threshold}; {len(drifted)} feature(s) over it)", **base)
    return None


def judge_shadow(policy: MonitorPolicy, *, use_case: str, metric: str, higher_is_better: bool, shadow_version: int,
                 champion_versions: tuple[int, ...], shadow_value: float, champion_value: float, events: int
                 ) -> MonitorDecision:
    """Promote or retire a shadow from its metric and the champion's on the same labelled events (a NaN on
    either side retires it: the events could not judge it)."""
    champions = "/".join(f"v{v}" for v in champion_versions)
    base = dict(use_case=use_case, metric=metric, model_version=shadow_version, value=shadow_value,
                reference=champion_value, events=events)
    if math.isnan(shadow_value) or math.isnan(champion_value):
        return MonitorDecision(action="retire_shadow", reason=f"{metric} undefined on the {events} paired events "
                               f"(shadow {_fmt(shadow_value)}, champion {_fmt(champion_value)})", **base)
    gap = worse_by(shadow_value, champion_value, higher_is_better)
    verdict = "promote_shadow" if gap <= policy.shadow_margin else "retire_shadow"
    return MonitorDecision(action=verdict, reason=f"shadow v{shadow_version} {metric} {_fmt(shadow_value)} vs champion "
                           f"{champions} {_fmt(champion_value)} on the same {events} labelled events (delta "
                           f"{shadow_value - champion_value:+.4f}, margin {policy.shadow_margin}): "
                           f"{'promoted' if verdict == 'promote_shadow' else 'retired'}", **base)
