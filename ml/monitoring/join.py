"""Predictions meet their labels: a bounded, order-independent join by the use case's key.

Labels arrive late (a flight's outcome hours after its prediction) and the three streams (champion predictions,
shadow predictions, labels) are read side by side, so any of them may come first. Each key is joined once per
stage: the first prediction of a key wins (a duplicate from at-least-once delivery is counted, not joined), and
a key that is both champion- and shadow-scored and labelled makes one pair, which the shadow verdict compares on.
Pending keys are bounded (oldest dropped first, counted) so memory does not grow with the stream.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

Stage = Literal["champion", "shadow"]
STAGES: tuple[Stage, ...] = ("champion", "shadow")


@dataclass(frozen=True)
class Prediction:
    """One prediction as the monitor needs it: who scored which key, the score and decision, when (epoch s)."""

    key: str
    version: int
    score: float
    decision: bool
    scored_at: float


@dataclass(frozen=True)
class Labelled:
    """A prediction of ``stage`` with its label; ``labelled_at``: the label record's Kafka timestamp (epoch s)."""

    stage: Stage
    prediction: Prediction
    y: bool
    labelled_at: float


@dataclass(frozen=True)
class Paired:
    """One key scored by the champion and the shadow, with its label: the same event for both."""

    champion: Prediction
    shadow: Prediction
    y: bool


@dataclass
class JoinCounts:
    duplicates: int = 0
    evicted_predictions: int = 0
    evicted_labels: int = 0


@dataclass
class LabelJoin:
    """The join's state: per stage the predictions by key, and the labels by key (each bounded)."""

    max_pending: int = 500_000
    counts: JoinCounts = field(default_factory=JoinCounts)

    def __post_init__(self) -> None:
        self._predictions: dict[Stage, OrderedDict[str, Prediction]] = {s: OrderedDict() for s in STAGES}
        self._labels: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    def prediction(self, stage: Stage, p: Prediction) -> list[Labelled | Paired]:
        """Add a prediction; what it completes (its labelled event, and the pair if the other stage's is in)."""
        mine = self._predictions[stage]
        if p.key in mine:
            self.counts.duplicates += 1
            return []
        mine[p.key] = p
        self._bound(mine, "evicted_predictions")
        label = self._labels.get(p.key)
        if label is None:
            return []
        out: list[Labelled | Paired] = [Labelled(stage, p, label[0], label[1])]
        other = self._predictions["shadow" if stage == "champion" else "champion"].get(p.key)
        if other is not None:
            out.append(self._pair(p if stage == "champion" else other, other if stage == "champion" else p, label[0]))
        return out

    def label(self, key: str, y: bool, at: float) -> list[Labelled | Paired]:
        """Add a label (the first of a key counts); what it completes."""
        if key in self._labels:
            return []
        self._labels[key] = (y, at)
        self._bound(self._labels, "evicted_labels")
        found = {s: self._predictions[s].get(key) for s in STAGES}
        out: list[Labelled | Paired] = [Labelled(s, p, y, at) for s, p in found.items() if p is not None]
        if found["champion"] is not None and found["shadow"] is not None:
            out.append(self._pair(found["champion"], found["shadow"], y))
        return out

    @property
    def pending(self) -> dict[str, int]:
        return {"champion": len(self._predictions["champion"]), "shadow": len(self._predictions["shadow"]),
                "labels": len(self._labels)}

    @staticmethod
    def _pair(champion: Prediction, shadow: Prediction, y: bool) -> Paired:
        return Paired(champion, shadow, y)

    def _bound(self, items: OrderedDict, counter: str) -> None:
        while len(items) > self.max_pending:
            items.popitem(last=False)
            setattr(self.counts, counter, getattr(self.counts, counter) + 1)
