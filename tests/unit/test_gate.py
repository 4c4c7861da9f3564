"""The promotion gate: margins against the champion, absolute floors, explicit force promotion."""

from __future__ import annotations

import json
import logging

import pytest

from ml.evaluate import DecisionRecord, gate
from ml.settings import LoopSettings

SETTINGS = LoopSettings(gate_auc_margin=0.01, gate_logloss_margin=0.02, gate_min_auc=0.60,
                        gate_max_logloss=0.69)


def m(auc: float, loss: float) -> dict[str, float]:
    return {"roc_auc": auc, "log_loss": loss, "brier": 0.2, "positive_rate": 0.3, "rows": 1000}


@pytest.mark.parametrize("challenger, champion, verdict", [
    (m(0.75, 0.55), m(0.74, 0.56), "promote"),   # better on both
    (m(0.735, 0.57), m(0.74, 0.56), "promote"),  # worse, but within both margins
    (m(0.725, 0.55), m(0.74, 0.56), "reject"),   # AUC worse by more than the margin
    (m(0.75, 0.59), m(0.74, 0.56), "reject"),    # log loss worse by more than the margin
    (m(0.59, 0.60), m(0.58, 0.62), "reject"),    # beats the champion but below the AUC floor
    (m(0.75, 0.70), m(0.74, 0.72), "reject"),    # beats the champion but above the log-loss ceiling
])
def test_margins_and_floors(challenger, champion, verdict):
    record = gate(challenger, champion, SETTINGS)
    assert record.verdict == verdict
    assert record.promote is (verdict == "promote")
    assert record.challenger == challenger and record.champion == champion
    assert (record.auc_margin, record.logloss_margin, record.min_auc, record.max_logloss) == (0.01, 0.02, 0.6, 0.69)
    assert not record.force_promote and record.force_reason is None


@pytest.mark.parametrize("challenger, verdict", [(m(0.65, 0.60), "promote"), (m(0.55, 0.60), "reject"),
                                                 (m(0.65, 0.75), "reject")])
def test_no_champion_checks_floors_only(challenger, verdict):
    record = gate(challenger, None, SETTINGS)
    assert record.verdict == verdict
    assert record.champion is None
    assert any("no champion" in r for r in record.reasons)


def test_force_promote_skips_the_comparison_and_is_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger="ml.evaluate"):
        record = gate(m(0.65, 0.60), m(0.80, 0.50), SETTINGS, force_reason="  feature contract v2  ")
    assert record.verdict == "promote"
    assert record.force_promote and record.force_reason == "feature contract v2"
    assert record.champion == m(0.80, 0.50)
    assert any("feature contract v2" in r for r in record.reasons)
    assert any(r.levelno == logging.WARNING and "FORCE" in r.message for r in caplog.records)


def test_force_promote_still_enforces_the_floors():
    record = gate(m(0.55, 0.60), m(0.80, 0.50), SETTINGS, force_reason="feature contract v2")
    assert record.verdict == "reject" and record.force_promote


@pytest.mark.parametrize("reason", ["", "   "])
def test_force_promote_requires_a_reason(reason):
    with pytest.raises(ValueError, match="non-empty reason"):
        gate(m(0.75, 0.55), m(0.74, 0.56), SETTINGS, force_reason=reason)


def test_record_round_trips_through_json_with_a_unique_id():
    a = gate(m(0.75, 0.55), m(0.74, 0.56), SETTINGS)
    b = gate(m(0.75, 0.55), m(0.74, 0.56), SETTINGS)
    assert a.decision_id != b.decision_id
    assert a.created_at.tzinfo is not None
    restored = DecisionRecord.model_validate(json.loads(a.model_dump_json()))
    assert restored == a
