"""Benchmark: the ACL matrix of the roles on a SASL_SSL broker, measured by trying each operation for real.

Starts a local sasl_ssl broker, creates the flight use case's topics and applies the roles' ACLs as admin
(``ml.acls``), then for every role and topic: produces one record (write) and reads partition 0 under a consumer
group the role may use (read); a topic the role may not even describe is invisible to it, so its read is taken
from the broker's own answer (DescribeTopics with authorized operations). Also a client with a wrong password and
one without TLS/SASL. Prints the table as markdown on stderr and, last, one JSON line with every cell.

    .venv/bin/python benchmarks/acl_matrix.py
"""

from __future__ import annotations

import logging
import sys
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition  # noqa: E402

from benchmarks.replay_snapshot import local_broker  # noqa: E402
from ml import acls, client_ids  # noqa: E402
from ml.errors import BrokerUnavailable  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from ml.topics import admin_client, ensure_topics, require_broker  # noqa: E402
from ml.use_cases import get  # noqa: E402

log = logging.getLogger("bench")
# A group each role may read under (the replayer has none: it reads nothing).
GROUPS = {"replayer": client_ids.SNAPSHOT_GROUP, "loop": client_ids.SNAPSHOT_GROUP,
          "scorer": f"{client_ids.MODEL_WATCHER_GROUP}matrix", "monitor": client_ids.SNAPSHOT_GROUP,
          "admin": "matrix"}


def write(settings: LoopSettings, topic: str) -> str:
    """"allowed", or the error code of producing one record to ``topic``."""
    outcome = []
    p = Producer(settings.kafka_config({"message.timeout.ms": 10_000, "log_level": 0}))
    # A key: the compacted models topic refuses records without one.
    p.produce(topic, key=b"acl-matrix", value=b"acl-matrix", on_delivery=lambda err, _msg: outcome.append(err))
    p.flush(15)
    err = outcome[0] if outcome else KafkaError(KafkaError._MSG_TIMED_OUT)
    return "allowed" if err is None else err.name()


def read(settings: LoopSettings, role: str, topic: str, describable: bool) -> str:
    """"allowed", or why reading partition 0 of ``topic`` is refused."""
    if not describable:
        return "TOPIC_AUTHORIZATION_FAILED"
    c = Consumer(settings.kafka_config({"group.id": GROUPS[role], "log_level": 0, "enable.auto.commit": False,
                                        "enable.partition.eof": True}))
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        for _ in range(40):
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error() is None or msg.error().code() == KafkaError._PARTITION_EOF:
                return "allowed"
            return msg.error().name()
        return "_TIMED_OUT"
    finally:
        c.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    flight = get("flight_delay")
    with local_broker("sasl_ssl") as cfg:
        prefix = f"matrix-{uuid.uuid4().hex[:6]}."

        def as_role(role: str, **fields) -> LoopSettings:
            return LoopSettings(kafka_bootstrap_servers=cfg.bootstrap_servers, topic_prefix=prefix,
                                kafka_client_config=cfg.client_config(role), **fields)

        admin = as_role("admin")
        ensure_topics(admin, [flight])
        acls.apply(admin, [flight])
        t = flight.topics.resolved(admin)
        topics = {"events": t.input, "labels": t.labels, "predictions": t.predictions, "dlq": t.dlq,
                  "models": admin.models_topic, "models.status": admin.status_topic}
        cells: dict[str, dict[str, dict[str, str]]] = {}
        for role in ("admin", *acls.ROLES):
            settings = as_role(role)
            seen = acls.authorized(settings, [flight])
            cells[role] = {name: {"write": write(settings, topic),
                                  "read": read(settings, role, topic, isinstance(seen.get(topic), set))}
                           for name, topic in topics.items()}
        refused = {}
        for name, props in {"wrong password": {"sasl.password": "not-the-password"},
                            "no TLS/SASL": {"security.protocol": "PLAINTEXT"}}.items():
            base = cfg.client_settings("loop")
            settings = LoopSettings(kafka_bootstrap_servers=cfg.bootstrap_servers,
                                    kafka_client_properties={**base, **props})
            try:
                require_broker(admin_client(settings), settings, 10)
                refused[name] = "allowed"
            except BrokerUnavailable as e:
                refused[name] = str(e)

    mark = {"allowed": "yes"}
    lines = ["| role | " + " | ".join(f"{n} write | {n} read" for n in topics) + " |",
             "|---" * (1 + 2 * len(topics)) + "|"]
    for role, row in cells.items():
        lines.append(f"| {role} | " + " | ".join(f"{mark.get(c['write'], 'no')} | {mark.get(c['read'], 'no')}"
                                                  for c in row.values()) + " |")
    print("\n".join(lines), file=sys.stderr)
    for name, outcome in refused.items():
        print(f"{name}: {outcome}", file=sys.stderr)
    print(orjson.dumps({"cells": cells, "clients": refused}).decode())


if __name__ == "__main__":
    main()
