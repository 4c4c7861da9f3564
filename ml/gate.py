"""The promotion gate: one engine, driven by each use case's criteria (metric, direction, floor, margin).

A challenger is promoted when every criterion holds: its metric clears the criterion's floor (the worst value
acceptable at all), and, when there is a champion scored on the same rows, it is not worse than the champion's
by more than the criterion's margin. With a confidence interval of the difference (``ml.bootstrap``), "not
worse by more than the margin" must hold for the interval's bound on the challenger's worse side, not only for
the point value: a challenger whose advantage may be noise does not replace the champion. The decision is data
(a ``DecisionRecord`` kept whatever the verdict), not an exception; only publishing acts on it. No criteria
means no promotion.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from ml.bootstrap import Interval

log = logging.getLogger(__name__)


class Criterion(BaseModel):
    """One metric the gate judges. ``floor`` is the worst acceptable value (a minimum when higher is better, a
    maximum otherwise); ``margin`` how much worse than the champion's the challenger's value may be."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(min_length=1)
    higher_is_better: bool
    floor: float | None = None
    margin: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _judges_something(self) -> Criterion:
        if self.floor is None and self.margin is None:
            raise ValueError(f"criterion on {self.metric} has neither a floor nor a margin")
        return self

    def worse_by(self, value: float, reference: float) -> float:
        """How much worse ``value`` is than ``reference`` in this metric's direction (negative: better)."""
        return reference - value if self.higher_is_better else value - reference

    def clears_floor(self, value: float) -> bool:
        return self.floor is None or self.worse_by(value, self.floor) <= 0

    def worst_case(self, interval: Interval) -> float:
        """How much worse than the champion the challenger may be by ``interval`` (challenger minus champion):
        its bound on the challenger's worse side, as ``worse_by`` counts it."""
        return -interval.low if self.higher_is_better else interval.high


def with_overrides(criteria: Sequence[Criterion], *, margins: Mapping[str, float] | None = None,
                   floors: Mapping[str, float] | None = None) -> tuple[Criterion, ...]:
    """``criteria`` with the given margins and floors (by metric name) replaced; raises ValueError naming a
    metric the criteria do not judge (a typo would otherwise be ignored silently)."""
    margins, floors = dict(margins or {}), dict(floors or {})
    judged = {c.metric for c in criteria}
    unknown = sorted((margins.keys() | floors.keys()) - judged)
    if unknown:
        raise ValueError(f"gate overrides name metrics {unknown} that the gate does not judge; it judges "
                         f"{sorted(judged)}")
    return tuple(c.model_copy(update={k: v for k, v in (("margin", margins.get(c.metric)),
                                                         ("floor", floors.get(c.metric))) if v is not None})
                 for c in criteria)


class DecisionRecord(BaseModel):
    """One gate decision, kept whatever the verdict (JSON via ``model_dump_json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    use_case: str
    verdict: Literal["promote", "reject"]
    reasons: list[str]
    challenger: dict[str, float]
    champion: dict[str, float] | None
    criteria: list[Criterion]
    force_promote: bool = False
    force_reason: str | None = None
    challenger_preprocessing: str | None = None  # fingerprints
    champion_preprocessing: str | None = None
    holdout_from: AwareDatetime | None = None
    holdout_to: AwareDatetime | None = None
    # Confidence intervals of the differences (challenger minus champion) by metric, when the gate had them.
    intervals: dict[str, Interval] = {}
    trigger: str | None = None  # why the run that produced this decision started (a schedule, a live breach, ...)

    @property
    def promote(self) -> bool:
        return self.verdict == "promote"


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def decide(use_case: str, criteria: Sequence[Criterion], challenger: Mapping[str, float],
           champion: Mapping[str, float] | None, *, force_reason: str | None = None,
           challenger_preprocessing: str | None = None, champion_preprocessing: str | None = None,
           holdout_from: datetime | None = None, holdout_to: datetime | None = None,
           intervals: Mapping[str, Interval] | None = None, trigger: str | None = None) -> DecisionRecord:
    """Judge ``challenger``'s metrics against the floors and, if there is a champion, against its metrics.

    ``intervals``: confidence intervals of the differences (challenger minus champion, on the same rows) by
    metric; a criterion with a margin and an interval is met when the interval's bound on the challenger's worse
    side is within the margin too (higher is better: ``low >= -margin``; lower is better: ``high <= margin``),
    one without an interval when the point difference is. They are recorded whatever the verdict. ``trigger``: why
    the run started, recorded. ``force_reason`` (non-empty) skips the champion comparison, for a changed
    preprocessing under which the champion cannot be fairly compared; it is logged at WARNING and recorded. It
    never skips the floors: an absolutely bad model is refused even when forced. Raises ValueError on an empty
    ``force_reason``, a criterion's metric missing from the challenger's (or the champion's) metrics, or an
    interval that names no judged metric (or another metric than its key).
    """
    if force_reason is not None and not force_reason.strip():
        raise ValueError("force promotion needs a non-empty reason")
    intervals = dict(intervals or {})
    gated = {c.metric for c in criteria}
    stray = sorted(k for k, iv in intervals.items() if k not in gated or iv.metric != k)
    if stray:
        raise ValueError(f"intervals {stray} name no metric the gate judges ({sorted(gated)}) or another metric "
                         "than their key")
    forced = force_reason is not None
    for name, metrics in (("challenger", challenger), ("champion", champion)):
        missing = [c.metric for c in criteria if metrics is not None and c.metric not in metrics]
        if missing:
            raise ValueError(f"the {name}'s metrics lack {missing} (it has {sorted(metrics)})")
    reasons: list[str] = []
    passed = bool(criteria)
    if not criteria:
        reasons.append("no gate criteria: nothing may be promoted")
    below = [c for c in criteria if not c.clears_floor(challenger[c.metric])]
    for c in below:
        side = "below the floor" if c.higher_is_better else "above the ceiling"
        reasons.append(f"challenger {c.metric} {_fmt(challenger[c.metric])} is {side} {_fmt(c.floor)}")
    passed = passed and not below
    floors = [c for c in criteria if c.floor is not None]
    if criteria and floors and not below:
        reasons.append("challenger clears the floors (" + ", ".join(
            f"{c.metric} {_fmt(challenger[c.metric])} {'>=' if c.higher_is_better else '<='} {_fmt(c.floor)}"
            for c in floors) + ")")

    if champion is None:
        reasons.append("no champion: floors only")
    elif forced:
        reasons.append(f"champion comparison skipped by force promotion: {force_reason.strip()}")
    else:
        for c in (c for c in criteria if c.margin is not None):
            value, theirs = challenger[c.metric], champion[c.metric]
            interval = intervals.get(c.metric)
            point_ok = c.worse_by(value, theirs) <= c.margin
            ok, ci, verdict = point_ok, "", "ok" if point_ok else "worse than allowed"
            if interval is not None:
                ok = point_ok and c.worst_case(interval) <= c.margin  # the interval only ever adds caution
                ci = f", {interval.level_text()} CI [{interval.low:+.4f}, {interval.high:+.4f}]"
                if point_ok and not ok:
                    verdict = f"within the margin, but not at {interval.level_text()} confidence"
            passed = passed and ok
            reasons.append(f"{c.metric} {_fmt(value)} vs champion {_fmt(theirs)} (delta {value - theirs:+.4f}{ci}, "
                           f"margin {_fmt(c.margin)}): {verdict}")

    record = DecisionRecord(
        use_case=use_case, verdict="promote" if passed else "reject", reasons=reasons,
        challenger=dict(challenger), champion=dict(champion) if champion is not None else None,
        criteria=list(criteria), force_promote=forced, force_reason=force_reason.strip() if forced else None,
        challenger_preprocessing=challenger_preprocessing, champion_preprocessing=champion_preprocessing,
        holdout_from=holdout_from, holdout_to=holdout_to, intervals=intervals, trigger=trigger,
    )
    if forced:
        log.warning("FORCE promotion requested (%s): decision %s verdict %s", record.force_reason,
                    record.decision_id, record.verdict)
    judged = ", ".join(f"{c.metric} {_fmt(challenger[c.metric])}" for c in criteria)
    log.info("%s gate decision %s: %s (challenger %s; champion %s): %s", use_case, record.decision_id,
             record.verdict, judged or "-",
             "none" if champion is None else ", ".join(f"{c.metric} {_fmt(champion[c.metric])}" for c in criteria),
             "; ".join(reasons))
    return record
