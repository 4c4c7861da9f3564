"""The gate's uncertainty: weighted metrics equal to scikit-learn's with sample weights, one replicate or many at
once; the paired bootstrap's interval on clearly different and identical models, its orientation and its seed;
the use cases' metrics computed by them equal to scikit-learn's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import (brier_score_loss, f1_score, log_loss, precision_score, recall_score,
                             roc_auc_score)

from ml.bootstrap import (Interval, at_threshold, paired_bootstrap, paired_bootstraps, weighted_f1,
                          weighted_log_loss, weighted_precision, weighted_recall, weighted_roc_auc)


def _rows(n: int = 3000, seed: int = 0, strength: float = 1.0):
    """Labels and the probabilities of a model that separates them with ``strength``."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    p = 1 / (1 + np.exp(-(strength * y + rng.normal(size=n) - 0.8)))
    return y, np.clip(p, 1e-7, 1 - 1e-7)


@pytest.fixture
def data():
    y, p = _rows()
    w = np.random.default_rng(1).integers(0, 4, len(y)).astype(float)
    return y, p, w


@pytest.mark.parametrize("rounded", [False, True], ids=["distinct scores", "many ties"])
def test_weighted_roc_auc_equals_sklearns_with_sample_weight(data, rounded):
    y, p, w = data
    p = np.round(p, 2) if rounded else p
    assert weighted_roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert weighted_roc_auc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
    assert weighted_roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count half


def test_weighted_log_loss_equals_sklearns_with_sample_weight(data):
    y, p, w = data
    assert weighted_log_loss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12)
    assert weighted_log_loss(y, p, w) == pytest.approx(log_loss(y, p, sample_weight=w), abs=1e-12)


def test_weighted_precision_recall_f1_equal_sklearns_at_a_threshold(data):
    y, p, w = data
    flagged = p > 0.4
    for fn, reference in ((weighted_precision, precision_score), (weighted_recall, recall_score),
                          (weighted_f1, f1_score)):
        assert fn(y, p, threshold=0.4) == pytest.approx(reference(y, flagged), abs=1e-12)
        assert fn(y, p, w, threshold=0.4) == pytest.approx(reference(y, flagged, sample_weight=w), abs=1e-12)
    assert weighted_precision(y, p, threshold=2.0) == 0.0  # nothing flagged
    assert weighted_f1(y, p, threshold=2.0) == 0.0


@pytest.mark.parametrize("metric", [weighted_roc_auc, weighted_log_loss, *at_threshold(0.4).values()])
def test_a_batched_metric_takes_many_replicates_weights_at_once(data, metric):
    y, p, _ = data
    weights = np.random.default_rng(2).integers(0, 3, (5, len(y))).astype("float32")  # the bootstrap's counts
    assert getattr(metric, "batched", False)
    np.testing.assert_allclose(metric(y, p, weights), [metric(y, p, w) for w in weights], rtol=1e-6)
    np.testing.assert_allclose(metric(y, p, weights), [metric(y, p, w.astype("float64")) for w in weights],
                               rtol=1e-6)


def test_a_weighted_metric_is_nan_where_the_weights_leave_one_class(data):
    y, p, _ = data
    only_negatives = (~y).astype(float)
    assert np.isnan(weighted_roc_auc(y, p, only_negatives))
    assert np.isnan(weighted_recall(y, p, only_negatives, threshold=0.4))


def test_a_clearly_better_model_has_an_interval_above_zero_and_an_identical_one_contains_zero():
    y, better = _rows(strength=2.0)
    _, worse = _rows(strength=0.5, seed=0)
    interval = paired_bootstrap(y, better, worse, weighted_roc_auc, samples=300, seed=3)
    assert interval.low > 0 and interval.low <= interval.point <= interval.high
    assert interval.point == pytest.approx(roc_auc_score(y, better) - roc_auc_score(y, worse), abs=1e-12)
    same = paired_bootstrap(y, better, better.copy(), weighted_roc_auc, samples=300, seed=3)
    assert (same.low, same.point, same.high) == (0.0, 0.0, 0.0)  # paired: the same rows, the same draws
    loss = paired_bootstrap(y, better, worse, weighted_log_loss, samples=300, seed=3, name="log_loss")
    assert loss.high < 0 and loss.metric == "log_loss"  # lower is better: the better model's loss is lower


def test_two_models_of_equal_skill_give_an_interval_around_zero():
    y, a = _rows(seed=5)
    rng = np.random.default_rng(6)
    b = 1 / (1 + np.exp(-(1.0 * y + rng.normal(size=len(y)) - 0.8)))  # the same model, other noise
    interval = paired_bootstrap(y, a, b, weighted_roc_auc, samples=300, seed=0)
    assert interval.low < 0 < interval.high
    assert interval.high - interval.low < 0.06


def test_the_interval_is_determined_by_the_seed_and_wider_at_a_higher_level(data):
    y, p, _ = data
    _, q = _rows(strength=0.8, seed=9)
    a = paired_bootstrap(y, p, q, weighted_roc_auc, samples=200, seed=7)
    assert a == paired_bootstrap(y, p, q, weighted_roc_auc, samples=200, seed=7)
    assert a != paired_bootstrap(y, p, q, weighted_roc_auc, samples=200, seed=8)
    wide = paired_bootstrap(y, p, q, weighted_roc_auc, samples=200, seed=7, level=0.99)
    assert wide.low <= a.low and wide.high >= a.high and wide.point == a.point
    assert (a.metric, a.level, a.samples) == ("weighted_roc_auc", 0.95, 200)


def test_an_unbatched_metric_is_called_per_replicate_with_the_same_draws(data):
    y, p, _ = data
    _, q = _rows(strength=0.8, seed=9)
    calls = []

    def auc(y, scores, weights=None):
        calls.append(None if weights is None else np.shape(weights))
        return weighted_roc_auc(y, scores, weights)

    plain = paired_bootstrap(y, p, q, auc, samples=50, seed=4, name="roc_auc")
    fast = paired_bootstrap(y, p, q, weighted_roc_auc, samples=50, seed=4, name="roc_auc")
    assert plain.low == pytest.approx(fast.low, abs=1e-12) and plain.high == pytest.approx(fast.high, abs=1e-12)
    assert calls.count(None) == 2 and calls.count((len(y),)) == 100  # the point, then 50 replicates per model


def test_several_metrics_share_the_resamples_and_equal_their_own_bootstraps(data):
    y, p, _ = data
    _, q = _rows(strength=0.8, seed=9)
    both = paired_bootstraps(y, p, q, {"roc_auc": weighted_roc_auc, "log_loss": weighted_log_loss}, samples=100,
                             seed=2)
    assert both["roc_auc"] == paired_bootstrap(y, p, q, weighted_roc_auc, name="roc_auc", samples=100, seed=2)
    assert both["log_loss"] == paired_bootstrap(y, p, q, weighted_log_loss, name="log_loss", samples=100, seed=2)


def test_each_model_is_judged_by_its_own_metric_function(data):
    """Sensors: precision at the threshold that travelled with each model."""
    y, p, _ = data
    ours, theirs = at_threshold(0.4)["f1"], at_threshold(0.6)["f1"]
    interval = paired_bootstrap(y, p, p, ours, champion_metric=theirs, samples=100, seed=1, name="f1")
    assert interval.point == pytest.approx(f1_score(y, p > 0.4) - f1_score(y, p > 0.6), abs=1e-12)


def test_the_bootstrap_refuses_unpaired_rows_and_bad_parameters(data):
    y, p, _ = data
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap(y, p, p[:-1], weighted_roc_auc)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(y, p, p, weighted_roc_auc, level=1.0)
    with pytest.raises(ValueError, match="no bootstrap replicate"):
        paired_bootstrap(y, p, p, lambda y, scores, weights=None: 0.5 if weights is None else np.nan, samples=10)


def test_an_interval_describes_itself():
    interval = Interval(metric="roc_auc", level=0.95, samples=1000, low=-0.0031, high=0.0154, point=0.0062)
    assert interval.describe() == "+0.0062 [-0.0031, +0.0154] 95%"
    assert Interval.model_validate_json(interval.model_dump_json()) == interval


# ---------------------------------------------------------------- the use cases' metrics


def test_flight_metrics_equal_sklearns_and_their_functions_take_weights(data):
    from use_cases.flight_delay.evaluation import EPS, metrics
    from use_cases.flight_delay.use_case import FlightDelay

    y, p, w = data
    p = np.r_[p[:-2], 0.0, 1.0]  # clipped to [EPS, 1 - EPS], as before
    clipped = np.clip(p, EPS, 1 - EPS)
    got = metrics(y.astype(int), p)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, clipped), abs=1e-12)
    assert got["log_loss"] == pytest.approx(log_loss(y, clipped, labels=[0, 1]), abs=1e-12)
    assert got["brier"] == pytest.approx(brier_score_loss(y, clipped), abs=1e-12)
    assert (got["positive_rate"], got["rows"]) == (pytest.approx(y.mean()), len(y))
    functions = FlightDelay().metric_functions(None)
    assert set(functions) == {c.metric for c in FlightDelay.gate}
    assert functions["roc_auc"](y, p, w) == pytest.approx(roc_auc_score(y, clipped, sample_weight=w), abs=1e-12)
    assert functions["log_loss"](y, p, w) == pytest.approx(log_loss(y, clipped, sample_weight=w), abs=1e-12)
    with pytest.raises(ValueError, match="single class"):
        metrics(np.zeros(10), p[:10])


def test_sensor_metrics_equal_sklearns_at_the_models_own_threshold(data):
    from use_cases.sensor_anomaly.evaluation import metrics
    from use_cases.sensor_anomaly.use_case import SensorAnomaly

    y, scores, w = data
    got = metrics(y, scores, 0.4)
    flagged = scores > 0.4
    assert got["precision"] == pytest.approx(precision_score(y, flagged), abs=1e-12)
    assert got["recall"] == pytest.approx(recall_score(y, flagged), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y, flagged), abs=1e-12)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert got["flagged_rate"] == pytest.approx(flagged.mean())
    fitted = SimpleNamespace(threshold=0.4)  # the one field of a fitted preprocessing they read
    functions = SensorAnomaly().metric_functions(fitted)
    assert set(functions) == {"precision", "recall", "f1"}
    assert functions["f1"](y, scores, w) == pytest.approx(f1_score(y, flagged, sample_weight=w), abs=1e-12)
    with pytest.raises(ValueError, match="no threshold"):
        SensorAnomaly().metric_functions(SimpleNamespace(threshold=None, fingerprint="x"))
