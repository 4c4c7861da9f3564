"""The live monitor's pure parts: the label join, the windows, the decisions, the use cases' live metrics."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from ml.monitoring.join import Labelled, LabelJoin, Paired, Prediction
from ml.monitoring.label_rows import LabelRows
from ml.monitoring.policy import Comparison, MonitorPolicy, judge_serving, judge_shadow
from ml.monitoring.windows import PairWindow, Window, Windows
from use_cases.flight_delay.live_metrics import calibration_error, live_metrics as flight_live
from use_cases.sensor_anomaly.live_metrics import live_metrics as sensor_live


def pred(key: str, version: int = 1, score: float = 0.5) -> Prediction:
    return Prediction(key, version, score, score >= 0.5, 1000.0)


def test_join_is_order_independent_and_joins_each_key_once_per_stage():
    join = LabelJoin()
    assert join.prediction("champion", pred("a")) == []
    (labelled,) = join.label("a", True, 5.0)
    assert labelled == Labelled("champion", pred("a"), True, 5.0)
    assert join.label("a", False, 6.0) == []  # the first label of a key counts
    assert join.prediction("champion", pred("a", version=2)) == []  # a duplicate prediction
    assert join.counts.duplicates == 1
    # label first, then champion and shadow: one labelled event each, and the pair once
    assert join.label("b", False, 7.0) == []
    assert join.prediction("shadow", pred("b", 2, 0.1)) == [Labelled("shadow", pred("b", 2, 0.1), False, 7.0)]
    out = join.prediction("champion", pred("b", 1, 0.8))
    assert out == [Labelled("champion", pred("b", 1, 0.8), False, 7.0), Paired(pred("b", 1, 0.8), pred("b", 2, 0.1),
                                                                                 False)]


def test_join_drops_the_oldest_pending_keys_beyond_its_bound():
    join = LabelJoin(max_pending=2)
    for k in "abc":
        join.prediction("champion", pred(k))
    assert join.pending["champion"] == 2 and join.counts.evicted_predictions == 1
    assert join.label("a", True, 1.0) == []  # evicted: its label finds nothing
    assert len(join.label("c", True, 1.0)) == 1


def test_windows_close_every_n_labelled_events_per_stage_and_version():
    windows = Windows(size=3, pair_size=2)
    closed = [windows.add(Labelled("champion", pred(str(i), version=1 + i % 2), i % 2 == 0, float(i)))
              for i in range(6)]
    done = [w for w in closed if w is not None]
    assert [(w.version, w.index, len(w.y)) for w in done] == [(1, 0, 3), (2, 0, 3)]
    assert isinstance(done[0], Window) and done[0].y.tolist() == [True, True, True]
    assert windows.add(Paired(pred("x", 1), pred("x", 3), True)) is None
    pw = windows.add(Paired(pred("y", 2), pred("y", 3), False))
    assert isinstance(pw, PairWindow) and pw.shadow_version == 3 and pw.champion_versions == (1, 2)
    assert windows.paired_events(3) == 0


POLICY = MonitorPolicy(rollback_margin=0.05, rollback_floor=0.55, retrain_margin=0.03, drift_threshold=0.25,
                       shadow_margin=0.01)


def serving(value: float, *, previous: float | None = 0.75, same: float | None = None, gate: float | None = 0.76,
            drift: dict | None = None, higher: bool = True):
    """The policy on a window of ``value``; ``previous``: v2's value on the same events (``same``: v3's there,
    the window's by default; None: not compared)."""
    comparison = None if previous is None else Comparison(2, value if same is None else same, previous, 1800)
    return judge_serving(POLICY, use_case="uc", metric="roc_auc", higher_is_better=higher, version=3, value=value,
                         events=2000, previous_version=2, comparison=comparison, gate_value=gate, drift=drift or {})


def test_serving_version_rolled_back_when_worse_than_the_previous_on_the_same_events_or_under_the_floor():
    d = serving(0.69)
    assert d.action == "rollback" and d.target_version == 2 and d.reference == 0.75 and d.events == 1800
    assert "worse than v2's 0.7500 on the same 1800 labelled events" in d.reason
    assert serving(0.71).action == "retrain"  # within the rollback margin, below gate - retrain margin
    floor = serving(0.54, previous=None)
    assert floor.action == "rollback" and "floor" in floor.reason and floor.events == 2000
    assert serving(0.749) is None
    assert serving(float("nan")) is None
    # The comparison, not the window's value, decides a rollback: a hard window both versions find hard holds.
    assert serving(0.60, previous=0.62, gate=None) is None
    assert serving(0.80, previous=0.80, same=0.70).action == "rollback"
    assert serving(0.69, previous=float("nan"), gate=None) is None  # undefined on those events: no verdict


def test_a_comparison_with_another_version_than_the_previous_is_not_acted_on():
    stale = Comparison(1, 0.60, 0.80, 1800)
    assert judge_serving(POLICY, use_case="uc", metric="roc_auc", higher_is_better=True, version=3, value=0.70,
                         events=2000, previous_version=2, comparison=stale, gate_value=None, drift={}) is None


def test_retraining_asked_for_on_a_live_drop_from_the_gate_or_on_drift():
    assert serving(0.72, previous=0.72).action == "retrain"
    d = serving(0.76, drift={"distance": 0.4, "carrier": 0.1, "hour": 0.3})
    assert d.action == "retrain" and "PSI of distance is 0.400" in d.reason and "2 feature(s)" in d.reason
    assert serving(0.76, drift={"distance": 0.1}) is None


def test_lower_is_better_metrics_are_judged_the_other_way():
    no_floor = POLICY.model_copy(update={"rollback_floor": None})

    def judged(value: float):
        return judge_serving(no_floor, use_case="uc", metric="log_loss", higher_is_better=False, version=3,
                             value=value, events=10, previous_version=2, comparison=Comparison(2, value, 0.60, 10),
                             gate_value=None, drift={})
    assert judged(0.70).action == "rollback"
    assert judged(0.58) is None


def test_label_rows_give_a_windows_events_by_key_latest_record_first_oldest_dropped():
    rows = LabelRows("id", max_rows=4)
    rows.add(pa.table({"id": ["a", "b"], "x": [1, 2], "y": [True, False]}))
    rows.add(pa.table({"id": ["c", "a"], "x": [3, 10], "y": [True, True]}))
    frame, found = rows.rows(["c", "zz", "a", "b"])
    assert found.tolist() == [0, 2, 3]
    assert frame["id"].tolist() == ["c", "a", "b"] and frame["x"].tolist() == [3, 10, 2]  # a's latest record
    assert str(frame["x"].dtype) == "Int64"  # as the snapshots load integers
    rows.add(pa.table({"id": ["d", "e", "f"], "x": [4, 5, 6], "y": [False, False, True]}))
    assert len(rows) == 5  # the first table dropped: the rest hold at least max_rows
    frame, found = rows.rows(["b", "d"])
    assert frame["id"].tolist() == ["d"] and found.tolist() == [1]
    assert rows.rows([])[1].size == 0


@pytest.mark.parametrize(("shadow", "champion", "action"), [(0.75, 0.755, "promote_shadow"),
                                                             (0.70, 0.75, "retire_shadow"),
                                                             (float("nan"), 0.75, "retire_shadow")])
def test_shadow_promoted_only_within_the_margin_on_the_same_events(shadow, champion, action):
    d = judge_shadow(POLICY, use_case="uc", metric="roc_auc", higher_is_better=True, shadow_version=4,
                     champion_versions=(3,), shadow_value=shadow, champion_value=champion, events=5000)
    assert d.action == action and d.model_version == 4


def test_flight_live_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.3
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.15, 5000), 0.001, 0.999)
    m = flight_live(y, p, p >= 0.5)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, p))
    assert m["predicted_positive_rate"] == pytest.approx(np.mean(p >= 0.5))
    assert calibration_error(np.array([1, 0]), np.array([0.95, 0.05])) == pytest.approx(0.05)
    assert math.isnan(flight_live(np.zeros(5, bool), np.full(5, 0.2), np.zeros(5, bool))["roc_auc"])


def test_sensor_live_metrics_equal_sklearn_at_the_decisions():
    rng = np.random.default_rng(1)
    y = rng.random(3000) < 0.05
    flagged = y ^ (rng.random(3000) < 0.02)
    assert sensor_live(y, rng.random(3000), flagged)["f1"] == pytest.approx(f1_score(y, flagged))
    none_flagged = sensor_live(y, np.zeros(3000), np.zeros(3000, bool))
    assert math.isnan(none_flagged["precision"]) and none_flagged["f1"] == 0.0


def test_the_live_figure_breaks_a_version_line_where_another_version_served_and_marks_decisions():
    from ml.monitoring.live_view import VersionSeries, svg

    v1 = VersionSeries(1, champion=[(100.0, 0.70), (110.0, 0.71), (150.0, 0.69)])
    v2 = VersionSeries(2, champion=[(120.0, 0.52), (130.0, 0.50)], shadow=[(90.0, 0.68)],
                       decisions=[(131.0, "rollback", "live roc_auc 0.50 < 0.70")])
    drawing = svg([v1, v2], "roc_auc")
    assert drawing.count("<polyline") == 4  # v1 before and after v2, v2 as champion, v2 as a shadow
    assert "stroke-dasharray='4 3'" in drawing and "v2 rolled back" in drawing and "0.50 &lt; 0.70" in drawing
    assert svg([VersionSeries(3)], "roc_auc") == ""
