"""The consumer group ids and transactional ids the clients of the loop and the scorer use: named in one place,
so the ACLs (``ml.acls``) grant exactly what the clients ask for. Prefixes end in "-" and get a random suffix."""

from __future__ import annotations

SNAPSHOT_GROUP = "retrain-loop-snapshot"  # snapshots and topic reads (assign only, nothing committed)
TOPIC_PROBE_GROUP = "topic-probe"  # the partition-leader probe after topic creation
MODELS_READER_GROUP = "models-reader-"  # publish reads the models topic before producing
ROLLOUT_CHECK_GROUP = "rollout-check-"  # the DAG's wait for the scorers' "live" reports
STATUS_READER_GROUP = "status-reader-"  # the plugin page's and the report's read of the status topic
MODEL_WATCHER_GROUP = "model-watcher-"  # each scorer replica's reader of the models topic
LIVE_MONITOR_GROUP = "live-monitor"  # the live monitor's reader of predictions and labels (assign only)


def scorer_group(use_case: str) -> str:
    """The default consumer group of a use case's scorer replicas (also their transactional id prefix)."""
    return f"{use_case.replace('_', '-')}-scorer"
