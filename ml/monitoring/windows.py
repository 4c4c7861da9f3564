"""Tumbling windows of labelled predictions per (stage, model version): every ``size`` labelled events close one,
which the monitor turns into live metrics. Counting labelled events rather than wall time gives every window
the same statistical weight whatever the traffic, and bounds how many events a detection needs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ml.monitoring.join import Labelled, Paired, Stage


@dataclass(frozen=True)
class Window:
    """The labelled events of one closed window: ``index`` counts the windows of this stage and version."""

    stage: Stage
    version: int
    index: int
    keys: tuple[str, ...]
    y: np.ndarray
    scores: np.ndarray
    decisions: np.ndarray
    first_scored_at: float
    last_scored_at: float
    last_labelled_at: float


@dataclass(frozen=True)
class PairWindow:
    """Events scored by both the champion and the shadow ``shadow_version``, with labels: the shadow's verdict."""

    shadow_version: int
    champion_versions: tuple[int, ...]
    y: np.ndarray
    champion_scores: np.ndarray
    champion_decisions: np.ndarray
    shadow_scores: np.ndarray
    shadow_decisions: np.ndarray


class Windows:
    """Accumulates labelled events and pairs; ``add`` returns the windows they close."""

    def __init__(self, size: int, pair_size: int) -> None:
        if size < 1 or pair_size < 1:
            raise ValueError("window sizes must be at least 1")
        self.size, self.pair_size = size, pair_size
        self._open: dict[tuple[Stage, int], list[Labelled]] = defaultdict(list)
        self._closed: dict[tuple[Stage, int], int] = defaultdict(int)
        self._pairs: dict[int, list[Paired]] = defaultdict(list)

    def add(self, item: Labelled | Paired) -> Window | PairWindow | None:
        if isinstance(item, Paired):
            pairs = self._pairs[item.shadow.version]
            pairs.append(item)
            if len(pairs) < self.pair_size:
                return None
            del self._pairs[item.shadow.version]
            return PairWindow(
                shadow_version=item.shadow.version,
                champion_versions=tuple(sorted({p.champion.version for p in pairs})),
                y=np.array([p.y for p in pairs]),
                champion_scores=np.array([p.champion.score for p in pairs]),
                champion_decisions=np.array([p.champion.decision for p in pairs]),
                shadow_scores=np.array([p.shadow.score for p in pairs]),
                shadow_decisions=np.array([p.shadow.decision for p in pairs]))
        key = (item.stage, item.prediction.version)
        events = self._open[key]
        events.append(item)
        if len(events) < self.size:
            return None
        del self._open[key]
        index = self._closed[key]
        self._closed[key] += 1
        return Window(stage=item.stage, version=item.prediction.version, index=index,
                      keys=tuple(e.prediction.key for e in events), y=np.array([e.y for e in events]),
                      scores=np.array([e.prediction.score for e in events]),
                      decisions=np.array([e.prediction.decision for e in events]),
                      first_scored_at=min(e.prediction.scored_at for e in events),
                      last_scored_at=max(e.prediction.scored_at for e in events),
                      last_labelled_at=max(e.labelled_at for e in events))

    def open_events(self, stage: Stage, version: int) -> int:
        """Labelled events of the window being filled."""
        return len(self._open.get((stage, version), ()))

    def paired_events(self, shadow_version: int) -> int:
        return len(self._pairs.get(shadow_version, ()))

    def drop_pairs(self, shadow_version: int) -> None:
        """Forget the pairs of a shadow that was decided on."""
        self._pairs.pop(shadow_version, None)
