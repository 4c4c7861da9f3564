"""The roles' least-privilege grants: computed from the use cases' topics and the clients' group ids."""

from __future__ import annotations

from ml import acls, client_ids
from ml.settings import LoopSettings
from ml.use_cases import get


def _allowed(grants, role: str, resource: str, name: str, operation: str) -> bool:
    return any(g.role == role and g.resource == resource and g.operation == operation
               and (g.name == name if g.pattern == "literal" else name.startswith(g.name)) for g in grants)


def test_only_the_loop_writes_models_and_each_role_keeps_to_its_topics():
    s = LoopSettings(topic_prefix="team-a.")
    grants = acls.grants(s, [get("flight_delay")])
    topics = get("flight_delay").topics.resolved(s)
    assert [r for r in acls.ROLES if _allowed(grants, r, "topic", s.models_topic, "write")] == ["loop"]
    assert _allowed(grants, "loop", "topic", s.models_topic, "describe_configs")  # publish checks the size
    assert _allowed(grants, "scorer", "topic", s.models_topic, "read")
    assert not _allowed(grants, "replayer", "topic", topics.predictions, "read")
    assert _allowed(grants, "replayer", "topic", topics.input, "write")
    assert not _allowed(grants, "scorer", "topic", topics.input, "write")
    assert [r for r in acls.ROLES if _allowed(grants, r, "topic", topics.predictions, "write")] == ["scorer"]
    # The shadow model's predictions: written by the scorer alone, read by the loop (its live monitor judges the
    # shadow) and the read-only monitor role.
    assert topics.shadow == "team-a.flights.predictions.shadow"
    assert [r for r in acls.ROLES if _allowed(grants, r, "topic", topics.shadow, "write")] == ["scorer"]
    assert [r for r in acls.ROLES if _allowed(grants, r, "topic", topics.shadow, "read")] == ["loop", "monitor"]
    for topic in (topics.labels, topics.predictions, topics.shadow, s.status_topic):
        assert _allowed(grants, "monitor", "topic", topic, "read") and _allowed(grants, "loop", "topic", topic, "read")
    assert _allowed(grants, "loop", "group", acls.client_ids.LIVE_MONITOR_GROUP, "read")
    assert not any(g.operation == "write" for g in grants if g.role == "monitor")
    # Every topic name carries the prefix: a team's roles reach only its own namespace.
    assert all(g.name.startswith("team-a.") for g in grants if g.resource == "topic")


def test_the_scorer_uses_its_own_group_and_transactional_ids_and_the_clients_groups_are_granted():
    s = LoopSettings()
    grants = acls.grants(s, [get("flight_delay")])
    group = client_ids.scorer_group("flight_delay")
    assert _allowed(grants, "scorer", "group", group, "read")
    assert _allowed(grants, "scorer", "transactional_id", f"{group}-replica-1", "write")
    assert not _allowed(grants, "loop", "transactional_id", f"{group}-replica-1", "write")
    assert _allowed(grants, "scorer", "group", f"{client_ids.MODEL_WATCHER_GROUP}ab12", "read")
    assert _allowed(grants, "loop", "group", client_ids.SNAPSHOT_GROUP, "read")
    assert _allowed(grants, "loop", "group", f"{client_ids.ROLLOUT_CHECK_GROUP}ab12", "read")


def test_principals_default_to_the_role_names_and_can_be_renamed():
    assert acls.principals() == {r: f"User:{r}" for r in acls.ROLES}
    assert acls.principals({"loop": "User:svc"})["loop"] == "User:svc"
