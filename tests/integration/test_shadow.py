"""Shadow scoring against a real broker and schema registry: a candidate published in shadow is scored beside the
champion (every event once on each topic, exactly_once), refused shadows leave both models in place, a tombstone
retires the shadow, and a promotion takes the shadow's loaded model live; the topics come from the loop's own code
and the envelope and status schemas stay compatible with the ones registered before stages existed."""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ConfigDict, create_model

from ml.airflow_tasks import wait_for_live
from ml.contracts import Contract, ModelStatus
from ml.publish import (CHAMPION, SHADOW, ModelEnvelope, build_envelope, latest_envelopes, promote_shadow, publish,
                        retire_shadow, shadow_key)
from ml.schema_registry import SchemaRegistry
from ml.schemas import TopicSchema
from ml.settings import LoopSettings
from ml.signing import Signer
from ml.topics import ensure_topics
from ml.use_cases import get
from ml.wire import Framing
from scoring_service.config import ScorerSettings

sys.path.insert(0, str(Path(__file__).parent))
from test_scorer import (  # noqa: E402 - the scorer tests' helpers
    MODEL, SIGNER, Running, artifacts, contract, events, flights, loop_settings, produce, read, status_records, trust,
    wait_for)

pytestmark = pytest.mark.integration
__all__ = ["artifacts", "contract", "events", "flights"]  # module fixtures shared with test_scorer


@pytest.fixture(scope="module")
def trusted_dir(tmp_path_factory) -> Path:
    return trust(tmp_path_factory.mktemp("trusted"), SIGNER)


@pytest.fixture
def settings(kafka_bootstrap, trusted_dir) -> ScorerSettings:
    """The flight use case's topics under a prefix of this test, created by `ml topics`'s code (the shadow
    predictions topic with them), and an exactly_once scorer's settings on them."""
    prefix = f"shadow-{uuid.uuid4().hex[:8]}."
    created = ensure_topics(LoopSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
                            [get("flight_delay")], timeout=30)
    assert f"{prefix}flights.predictions.shadow" in created and all(created.values())
    return ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix,
                          group_id=f"scorer-{uuid.uuid4().hex[:8]}", model_name=MODEL, batch_size=500,
                          batch_max_wait_ms=50, http_port=0, model_trusted_keys_dir=trusted_dir,
                          delivery_mode="exactly_once", session_timeout_ms=6000)


def envelope(version: int, artifact: bytes, fitted: dict, stage: str = CHAMPION, signer: Signer = SIGNER):
    return build_envelope(model_name=MODEL, model_version=version, run_id=f"run-{version}",
                          model_uri=f"models:/{MODEL}/{version}", preprocessing=fitted, metrics={"auc": 0.7},
                          decision_id=f"d-{version}", artifact=artifact, signer=signer, stage=stage)


def positions(records: list[dict]) -> Counter:
    return Counter((r["source_partition"], r["source_offset"]) for r in records)


def test_a_shadow_scores_beside_the_champion_is_retired_then_promoted_without_a_reload(
        settings, events, contract, artifacts):
    s, loop, good = settings, loop_settings(settings), contract.to_dict()
    publish(loop, envelope(1, artifacts["a"], good))
    running = Running(s)
    try:
        wait_for(lambda: running.scorer.ready()[0], 120, "v1 serving")
        produce(s, s.input_topic, events[:500])
        assert {p["model_version"] for p in read(s, s.output_topic, 500, settle=0.2)} == {1}

        # v2 in shadow: the DAG's rollout check waits for the scorer's "shadow" record.
        result = publish(loop, envelope(2, artifacts["b"], good, SHADOW))
        assert (result.published, result.stage) == (True, SHADOW)
        assert publish(loop, envelope(2, artifacts["b"], good, SHADOW)).published is False  # idempotent per stage
        live = wait_for_live(loop, 2, 60, topic=s.status_topic, stage=SHADOW)
        assert (live["status"], live["serving_version"]) == ("shadow", 1)
        assert running.scorer.slot.current.version == 1 and running.scorer.slot.shadow.version == 2
        assert running.http("/readyz")[1].endswith("shadow v2\n")

        # Refused shadows (an untrusted key, a NaN output layer): v1 serves, v2 stays in shadow.
        framing = Framing(s)
        bad = [envelope(3, artifacts["b"], good, SHADOW, Signer.generate()),
               envelope(4, artifacts["nan"], good, SHADOW)]
        produce(s, s.models_topic, [(shadow_key(MODEL).encode(), framing.frame(s.models_topic, e.to_bytes()))
                                    for e in bad], raw=True)
        wait_for(lambda: running.metric("scorer_models_rejected_total", {"reason": "canary"}) == 1, 60,
                 "both refused")

        produce(s, s.input_topic, events[500:2000])
        predictions = read(s, s.output_topic, 2000)
        shadowed = read(s, s.shadow_topic, 1500)
        assert len(predictions) == 2000 and max(positions(predictions).values()) == 1
        assert len(shadowed) == 1500 and max(positions(shadowed).values()) == 1
        after = [p for p in predictions if (p["source_partition"], p["source_offset"]) in positions(shadowed)]
        assert len(after) == 1500 and {p["model_version"] for p in predictions} == {1}
        assert {(p["model_name"], p["model_version"], p["source_topic"]) for p in shadowed} == {
            (MODEL, 2, s.input_topic)}
        assert {p["flight_id"] for p in shadowed} == {p["flight_id"] for p in after}
        wait_for(lambda: running.metric("scorer_shadow_predictions_out_total") == 1500, 30, "shadow counted")

        # Retired: the shadow's outputs stop.
        retired = retire_shadow(loop, MODEL, reason="worse than v1 on 1500 events")
        assert retired.retired_version == 4  # the topic's newest signed shadow: the canary is the scorers' check
        wait_for(lambda: running.scorer.slot.shadow is None, 30, "the shadow cleared")
        produce(s, s.input_topic, events[2000:2500])
        assert len(read(s, s.output_topic, 2500)) == 2500
        assert len(read(s, s.shadow_topic, 1500, settle=1.5)) == 1500

        # Promoted: v2 in shadow again, then live as champion with the model the shadow had loaded.
        publish(loop, envelope(2, artifacts["b"], good, SHADOW))
        wait_for(lambda: running.scorer.slot.shadow is not None, 60, "v2 in shadow again")
        loaded = running.scorer.slot.shadow
        promoted = promote_shadow(loop, 2)
        assert (promoted.published, promoted.stage, promoted.model_version) == (True, CHAMPION, 2)
        wait_for(lambda: running.scorer.slot.current.version == 2, 60, "v2 live")
        assert running.scorer.slot.current is loaded and running.scorer.slot.shadow is None
        assert promote_shadow(loop, 2).published is False  # a retry: promoted already
        produce(s, s.input_topic, events[2500:3000])
        final = read(s, s.output_topic, 3000)
        assert len(final) == 3000 and max(positions(final).values()) == 1
        assert Counter(p["model_version"] for p in final) == {1: 2500, 2: 500}
        assert len(read(s, s.shadow_topic, 1500, settle=1.0)) == 1500
        assert running.metric("scorer_shadow_model_version", {"model_name": MODEL}) == 0

        statuses = [(r["status"], r["model_version"], r["stage"], r["reason_kind"])
                    for r in status_records(s, 8)]
        assert statuses == [("live", 1, "champion", ""), ("shadow", 2, "shadow", ""),
                            ("rejected", 3, "shadow", "untrusted_key"), ("rejected", 4, "shadow", "canary"),
                            ("retired", 2, "shadow", "tombstone"), ("shadow", 2, "shadow", ""),
                            ("live", 2, "champion", ""), ("retired", 2, "shadow", "promoted")]
        assert status_records(s, 8)[4]["reason"] == "worse than v1 on 1500 events"
        latest = latest_envelopes(loop)
        assert set(latest) == {(MODEL, CHAMPION)} and latest[(MODEL, CHAMPION)].envelope.model_version == 2
    finally:
        running.stop()


def _v1_of(contract: type, name: str, **changed) -> type:
    """``contract`` as it was registered before stages: without ``stage``, other fields changed as given."""
    fields = {k: (changed.get(k, info.annotation), info) for k, info in contract.model_fields.items() if k != "stage"}
    base = {"__base__": Contract} if issubclass(contract, Contract) else {"__config__": ConfigDict(extra="forbid")}
    return create_model(name, **base, **fields)


def test_the_registry_accepts_the_stage_fields_over_the_schemas_registered_before(schema_registry_url):
    from typing import Literal

    registry = SchemaRegistry(schema_registry_url)
    topic = f"compat-{uuid.uuid4().hex[:8]}"
    for new, old in ((ModelEnvelope, _v1_of(ModelEnvelope, "ModelEnvelopeBefore")),
                     (ModelStatus, _v1_of(ModelStatus, "ModelStatusBefore", status=Literal["live", "rejected"]))):
        registry.register(TopicSchema(f"{topic}.{new.__name__}", old))
        check = registry.check(TopicSchema(f"{topic}.{new.__name__}", new))
        assert check.ok and check.state == "compatible", check
