"""The gate engine: floors, margins against the champion in each metric's direction, explicit force promotion,
overrides of a use case's criteria, and the one time-ordered split of labelled rows."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from ml.bootstrap import Interval
from ml.gate import Criterion, DecisionRecord, decide, with_overrides
from ml.split import latest_cut, time_order, time_split

AUC = Criterion(metric="roc_auc", higher_is_better=True, floor=0.60, margin=0.01)
LOSS = Criterion(metric="log_loss", higher_is_better=False, floor=0.69, margin=0.02)
CRITERIA = (AUC, LOSS)


def m(auc: float, loss: float) -> dict[str, float]:
    return {"roc_auc": auc, "log_loss": loss, "brier": 0.2, "positive_rate": 0.3, "rows": 1000}


def gate(challenger, champion, **kwargs) -> DecisionRecord:
    return decide("flight_delay", CRITERIA, challenger, champion, **kwargs)


@pytest.mark.parametrize("challenger, champion, verdict", [
    (m(0.75, 0.55), m(0.74, 0.56), "promote"),   # better on both
    (m(0.735, 0.57), m(0.74, 0.56), "promote"),  # worse, but within both margins
    (m(0.725, 0.55), m(0.74, 0.56), "reject"),   # AUC worse by more than the margin
    (m(0.75, 0.59), m(0.74, 0.56), "reject"),    # log loss worse by more than the margin
    (m(0.59, 0.60), m(0.58, 0.62), "reject"),    # beats the champion but below the AUC floor
    (m(0.75, 0.70), m(0.74, 0.72), "reject"),    # beats the champion but above the log-loss ceiling
])
def test_margins_and_floors_in_each_metrics_direction(challenger, champion, verdict):
    record = gate(challenger, champion)
    assert record.verdict == verdict
    assert record.promote is (verdict == "promote")
    assert record.challenger == challenger and record.champion == champion
    assert record.criteria == list(CRITERIA) and record.use_case == "flight_delay"
    assert not record.force_promote and record.force_reason is None


def test_the_reasons_name_each_metric_its_bound_and_the_champion_delta():
    record = gate(m(0.725, 0.70), m(0.74, 0.56))
    assert "challenger log_loss 0.7000 is above the ceiling 0.6900" in record.reasons
    assert "roc_auc 0.7250 vs champion 0.7400 (delta -0.0150, margin 0.0100): worse than allowed" in record.reasons
    below = gate(m(0.5, 0.6), None)
    assert below.reasons[0] == "challenger roc_auc 0.5000 is below the floor 0.6000"


@pytest.mark.parametrize("challenger, verdict", [(m(0.65, 0.60), "promote"), (m(0.55, 0.60), "reject"),
                                                 (m(0.65, 0.75), "reject")])
def test_no_champion_checks_floors_only(challenger, verdict):
    record = gate(challenger, None)
    assert record.verdict == verdict
    assert record.champion is None
    assert any("no champion" in r for r in record.reasons)


def test_a_criterion_with_a_margin_only_compares_and_one_with_a_floor_only_bounds():
    f1 = Criterion(metric="f1", higher_is_better=True, margin=0.02)
    precision = Criterion(metric="precision", higher_is_better=True, floor=0.5)
    ok = decide("sensor_anomaly", (precision, f1), {"precision": 0.9, "f1": 0.1}, None)
    assert ok.promote  # no champion: f1 has nothing to be compared with
    worse = decide("sensor_anomaly", (precision, f1), {"precision": 0.9, "f1": 0.70}, {"precision": 0.1, "f1": 0.73})
    assert not worse.promote
    lower = decide("x", (Criterion(metric="mae", higher_is_better=False, margin=0.5),),
                   {"mae": 10.4}, {"mae": 10.0})
    assert lower.promote  # 0.4 minutes worse, within the margin of 0.5


def test_no_criteria_means_no_promotion():
    record = decide("x", (), {"roc_auc": 0.99}, None)
    assert not record.promote and "no gate criteria" in record.reasons[0]


def test_a_criterion_judges_something_and_a_metric_must_be_measured():
    with pytest.raises(ValidationError, match="neither a floor nor a margin"):
        Criterion(metric="roc_auc", higher_is_better=True)
    with pytest.raises(ValueError, match=r"the challenger's metrics lack \['log_loss'\]"):
        gate({"roc_auc": 0.7}, None)


def test_overrides_replace_margins_and_floors_and_refuse_a_metric_the_gate_does_not_judge():
    looser = with_overrides(CRITERIA, margins={"roc_auc": 0.05}, floors={"log_loss": 0.8})
    assert looser == (AUC.model_copy(update={"margin": 0.05}), LOSS.model_copy(update={"floor": 0.8}))
    assert gate(m(0.70, 0.56), m(0.74, 0.56)).verdict == "reject"
    assert decide("flight_delay", looser, m(0.70, 0.56), m(0.74, 0.56)).verdict == "promote"
    with pytest.raises(ValueError, match=r"gate overrides name metrics \['auc'\]"):
        with_overrides(CRITERIA, margins={"auc": 0.05})


def test_force_promote_skips_the_comparison_and_is_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger="ml.gate"):
        record = gate(m(0.65, 0.60), m(0.80, 0.50), force_reason="  preprocessing v2  ")
    assert record.verdict == "promote"
    assert record.force_promote and record.force_reason == "preprocessing v2"
    assert record.champion == m(0.80, 0.50)
    assert any("preprocessing v2" in r for r in record.reasons)
    assert any(r.levelno == logging.WARNING and "FORCE" in r.message for r in caplog.records)


def test_force_promote_still_enforces_the_floors():
    record = gate(m(0.55, 0.60), m(0.80, 0.50), force_reason="preprocessing v2")
    assert record.verdict == "reject" and record.force_promote


@pytest.mark.parametrize("reason", ["", "   "])
def test_force_promote_requires_a_reason(reason):
    with pytest.raises(ValueError, match="non-empty reason"):
        gate(m(0.75, 0.55), m(0.74, 0.56), force_reason=reason)


def test_record_round_trips_through_json_with_a_unique_id():
    a = gate(m(0.75, 0.55), m(0.74, 0.56))
    b = gate(m(0.75, 0.55), m(0.74, 0.56))
    assert a.decision_id != b.decision_id
    assert a.created_at.tzinfo is not None
    restored = DecisionRecord.model_validate(json.loads(a.model_dump_json()))
    assert restored == a


# ---------------------------------------------------------------- confidence intervals of the differences


def ci(metric: str, low: float, high: float, point: float) -> Interval:
    return Interval(metric=metric, level=0.95, samples=1000, low=low, high=high, point=point)


def test_a_higher_is_better_metric_needs_the_intervals_low_bound_within_the_margin():
    # AUC +0.0062 on the point, but the champion may be better by up to 0.0131 (> margin 0.01): rejected.
    unsure = gate(m(0.7712, 0.55), m(0.7650, 0.56), intervals={"roc_auc": ci("roc_auc", -0.0131, 0.0254, 0.0062)})
    assert unsure.verdict == "reject"
    assert ("roc_auc 0.7712 vs champion 0.7650 (delta +0.0062, 95% CI [-0.0131, +0.0254], margin 0.0100): "
            "within the margin, but not at 95% confidence") in unsure.reasons
    sure = gate(m(0.7712, 0.55), m(0.7650, 0.56), intervals={"roc_auc": ci("roc_auc", -0.0031, 0.0154, 0.0062)})
    assert sure.verdict == "promote"
    assert ("roc_auc 0.7712 vs champion 0.7650 (delta +0.0062, 95% CI [-0.0031, +0.0154], margin 0.0100): ok"
            in sure.reasons)
    assert sure.intervals == {"roc_auc": ci("roc_auc", -0.0031, 0.0154, 0.0062)}
    # log_loss had no interval: its point difference decides, as without intervals.
    assert "log_loss 0.5500 vs champion 0.5600 (delta -0.0100, margin 0.0200): ok" in sure.reasons


def test_a_lower_is_better_metric_needs_the_intervals_high_bound_within_the_margin():
    challenger, champion = m(0.75, 0.565), m(0.75, 0.56)  # log loss 0.005 worse: within the margin of 0.02
    assert gate(challenger, champion).promote
    unsure = gate(challenger, champion, intervals={"log_loss": ci("log_loss", -0.012, 0.025, 0.005)})
    assert not unsure.promote and "not at 95% confidence" in unsure.reasons[-1]
    assert gate(challenger, champion, intervals={"log_loss": ci("log_loss", -0.012, 0.019, 0.005)}).promote
    # An interval never makes a point value beyond the margin acceptable.
    worse = gate(m(0.75, 0.59), champion, intervals={"log_loss": ci("log_loss", -0.01, 0.015, 0.03)})
    assert not worse.promote and worse.reasons[-1].endswith("worse than allowed")


def test_intervals_change_nothing_without_a_champion_or_when_forced_and_are_recorded():
    interval = {"roc_auc": ci("roc_auc", -0.05, 0.02, -0.01)}
    forced = gate(m(0.70, 0.56), m(0.71, 0.56), intervals=interval, force_reason="preprocessing v2")
    assert forced.promote and forced.force_promote and forced.intervals == interval
    assert not any("CI" in r for r in forced.reasons)
    alone = gate(m(0.70, 0.56), None, intervals=interval)
    assert alone.promote and alone.intervals == interval
    with pytest.raises(ValueError, match=r"intervals \['auc'\]"):
        gate(m(0.70, 0.56), m(0.71, 0.56), intervals={"auc": ci("auc", -0.05, 0.02, -0.01)})


def test_a_record_carries_its_intervals_and_trigger_through_json_and_an_old_record_still_loads():
    record = gate(m(0.75, 0.55), m(0.74, 0.56), intervals={"roc_auc": ci("roc_auc", -0.001, 0.02, 0.01)},
                  trigger="live roc_auc 0.61 below 0.66 at the gate")
    assert record.trigger == "live roc_auc 0.61 below 0.66 at the gate"
    assert DecisionRecord.model_validate(json.loads(record.model_dump_json())) == record
    old = json.loads(gate(m(0.75, 0.55), m(0.74, 0.56)).model_dump_json())
    del old["intervals"], old["trigger"]  # a record logged before intervals and triggers
    restored = DecisionRecord.model_validate(old)
    assert restored.intervals == {} and restored.trigger is None and restored.promote


# ---------------------------------------------------------------- the time-ordered split


@pytest.fixture
def rows() -> pd.DataFrame:
    t = pd.date_range("2013-01-01", periods=240, freq="h", tz="UTC")
    # Two keys per hour, shuffled: the split orders them by time, then key.
    frame = pd.DataFrame({"t": t.repeat(2), "key": ["b", "a"] * 240, "v": range(480)})
    return frame.sample(frac=1, random_state=0)


def test_split_by_days_keeps_the_last_days_second(rows):
    earlier, latest = time_split(rows, ("t", "key"), days=1)
    assert len(latest) == 48 and len(earlier) == 432
    assert earlier["t"].max() < latest["t"].min()
    assert latest["t"].min() > rows["t"].max() - pd.Timedelta(days=1)
    assert list(latest["key"][:2]) == ["a", "b"]  # ties broken by the second column


def test_split_by_fraction_keeps_the_latest_rows_second(rows):
    earlier, latest = time_split(rows, ("t", "key"), fraction=0.1)
    assert len(latest) == 48 and earlier["t"].max() <= latest["t"].min()
    again, _ = time_split(rows.sample(frac=1, random_state=1), ("t", "key"), fraction=0.1)
    pd.testing.assert_frame_equal(earlier, again)  # the order of the input does not matter


def test_a_frame_and_an_arrow_table_are_time_ordered_alike_and_cut_as_time_split_cuts(rows):
    shuffled = rows.sample(frac=1, random_state=2)
    shuffled.loc[shuffled.index[:5], "t"] = shuffled["t"].iloc[0]  # ties on both keys keep their input order
    shuffled.loc[shuffled.index[:5], "key"] = "a"
    by_frame = time_order(shuffled, ("t", "key"))
    by_table = time_order(pa.Table.from_pandas(shuffled, preserve_index=False), ("t", "key"))
    assert by_frame.tolist() == by_table.tolist()
    expected = shuffled.reset_index(drop=True).sort_values(["t", "key"], kind="stable").index
    assert by_frame.tolist() == expected.tolist()
    earlier, latest = time_split(shuffled, ("t", "key"), fraction=0.1)
    cut = latest_cut(len(shuffled), 0.1)
    assert (cut, len(shuffled) - cut) == (len(earlier), len(latest))
    ordered_keys = shuffled["key"].to_numpy()[by_frame]
    assert ordered_keys[cut:].tolist() == latest["key"].tolist()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_the_latest_cut_needs_a_fraction_strictly_between_zero_and_one(fraction):
    with pytest.raises(ValueError, match="fraction"):
        latest_cut(100, fraction)


@pytest.mark.parametrize("kwargs", [{}, {"fraction": 0.1, "days": 1}, {"fraction": 1.0}, {"days": 0}])
def test_split_takes_exactly_one_valid_bound(rows, kwargs):
    with pytest.raises(ValueError):
        time_split(rows, ("t",), **kwargs)
