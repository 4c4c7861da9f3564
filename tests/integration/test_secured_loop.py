"""The loop on a SASL_SSL broker with least-privilege ACLs: each role's client file, the ACL matrix enforced by the
broker, clear errors for wrong credentials or CA, and the whole loop (replay, a DAG run, publish, a scorer's hot
swap under exactly_once) with every secret kept out of logs, XComs, MLflow, reports and envelopes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from infra.airflow.local import AirflowConfig, airflow_env
from ml import acls
from ml.errors import BrokerUnavailable
from ml.settings import LoopSettings
from ml.topics import ensure_topics, topic_specs
from ml.use_cases import get
from ml.wire import TopicReader
from scoring_service.config import ScorerSettings
from use_cases.flight_delay.replay import replay_frame
from use_cases.flight_delay.source import load_completed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FLIGHT = get("flight_delay")


@pytest.fixture(scope="module")
def secured(secured_kafka, tmp_path_factory):
    """The flight use case's topics under a prefix of their own on the secured broker, created by the admin,
    with the roles' ACLs applied; a signing key pair for the loop and the scorer."""
    prefix = f"s{uuid.uuid4().hex[:6]}."
    admin = LoopSettings(kafka_bootstrap_servers=secured_kafka.bootstrap_servers, topic_prefix=prefix,
                         kafka_client_config=secured_kafka.client_config("admin"))
    ensure_topics(admin, [FLIGHT])
    acls.apply(admin, [FLIGHT])
    keys = tmp_path_factory.mktemp("keys")
    subprocess.run([sys.executable, "-m", "ml", "keys", "generate", "--out", str(keys), "--key-id", "secured-test"],
                   check=True, capture_output=True, cwd=REPO)
    trusted = keys / "trusted"
    trusted.mkdir()
    shutil.copy(keys / "secured-test.pem", trusted / "secured-test.pem")
    return SimpleNamespace(cluster=secured_kafka, prefix=prefix, admin=admin, signing_key=keys / "secured-test.key",
                           trusted=trusted)


def as_role(secured, role: str, cls=LoopSettings, **fields):
    """Settings of ``role``'s clients: its properties file, the test's topics."""
    return cls(kafka_bootstrap_servers=secured.cluster.bootstrap_servers, topic_prefix=secured.prefix,
               kafka_client_config=secured.cluster.client_config(role), **fields)


def _produce(settings, topic: str) -> KafkaError | None:
    """The delivery error of one record produced to ``topic`` with ``settings``' credentials (None: written)."""
    outcome = []
    p = Producer(settings.kafka_config({"message.timeout.ms": 10_000, "log_level": 0}))
    p.produce(topic, value=b"probe", on_delivery=lambda err, _msg: outcome.append(err))
    p.flush(15)
    return outcome[0] if outcome else KafkaError(KafkaError._MSG_TIMED_OUT)


def _read_error(settings, topic: str, group: str = acls.client_ids.SNAPSHOT_GROUP) -> KafkaError | None:
    """The first error reading partition 0 of ``topic`` with ``settings``' credentials under ``group`` (None:
    readable). librdkafka looks the group's coordinator up even for assigned partitions: it needs a group."""
    c = Consumer(settings.kafka_config({"group.id": group, "log_level": 0,
                                        "enable.partition.eof": True, "enable.auto.commit": False}))
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        for _ in range(40):
            msg = c.poll(0.5)
            if msg is not None and msg.error() is not None:
                return None if msg.error().code() == KafkaError._PARTITION_EOF else msg.error()
            if msg is not None:
                return None
        return KafkaError(KafkaError._TIMED_OUT)
    finally:
        c.close()


def test_the_acl_matrix_is_enforced_by_the_broker(secured):
    topics = FLIGHT.topics.resolved(secured.admin)
    models = secured.admin.models_topic
    scorer, replayer, monitor, loop = (as_role(secured, r) for r in ("scorer", "replayer", "monitor", "loop"))

    assert _produce(scorer, models).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _produce(monitor, topics.predictions).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _produce(replayer, topics.predictions).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # The replayer reads nothing: it has no group to read under, nor the topic.
    assert _read_error(replayer, topics.predictions).code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    assert _read_error(scorer, models, f"{acls.client_ids.MODEL_WATCHER_GROUP}probe") is None
    # Allowed writes go to the DLQ: the predictions topic is read back, record by record, by the loop test.
    assert _produce(scorer, topics.dlq) is None
    assert _read_error(monitor, topics.predictions) is None
    assert _read_error(loop, topics.labels) is None
    # What each role may do as the broker reports it (DescribeTopics; nothing read or written).
    assert acls.authorized(loop, [FLIGHT])[models] >= {"read", "write", "describe"}
    assert "write" not in acls.authorized(scorer, [FLIGHT])[models]
    assert acls.authorized(replayer, [FLIGHT])[topics.predictions] == "TOPIC_AUTHORIZATION_FAILED"
    # A topic a role may not describe is invisible to it: an assigned read waits on it, so ask the broker.
    assert acls.authorized(scorer, [FLIGHT])[topics.labels] == "TOPIC_AUTHORIZATION_FAILED"


def test_acls_apply_is_idempotent_removes_stray_grants_and_needs_the_admin(secured):
    again = acls.apply(secured.admin, [FLIGHT])
    assert (again.created, again.deleted) == ([], []) and again.kept == len(acls.grants(secured.admin, [FLIGHT]))
    stray = acls.Grant("scorer", "topic", secured.admin.models_topic, "literal", "write")
    secured_admin_client = acls.AdminClient(secured.admin.kafka_config())
    for fut in secured_admin_client.create_acls([stray.binding("User:scorer")]).values():
        fut.result(30)
    fixed = acls.apply(secured.admin, [FLIGHT])
    assert [(b.name, b.operation.name) for b in fixed.deleted] == [(secured.admin.models_topic, "WRITE")]
    assert _produce(as_role(secured, "scorer"), secured.admin.models_topic).code() == \
        KafkaError.TOPIC_AUTHORIZATION_FAILED
    with pytest.raises(acls.AclError, match="refused to manage ACLs"):
        acls.apply(as_role(secured, "loop"), [FLIGHT])


def test_wrong_credentials_and_an_untrusted_ca_are_clear_errors_naming_the_broker(secured, tmp_path):
    bootstrap = secured.cluster.bootstrap_servers
    wrong = tmp_path / "wrong.properties"
    props = secured.cluster.properties("loop")
    wrong.write_text("".join(f"{k}={'not-the-password' if k == 'sasl.password' else v}\n" for k, v in props.items()))
    settings = LoopSettings(kafka_bootstrap_servers=bootstrap, kafka_client_config=wrong, topic_prefix=secured.prefix)
    with pytest.raises(BrokerUnavailable, match=rf"Kafka at {bootstrap} .*credentials of 'loop' were refused"):
        ensure_topics(settings, [FLIGHT], timeout=10)

    other_ca = tmp_path / "other-ca.pem"
    from infra.kafka import security  # a CA of its own, as another cluster would have
    other_ca.write_text(Path(security.ensure_tls(tmp_path / "other-tls", "127.0.0.1").ca_cert).read_text())
    untrusting = tmp_path / "untrusting.properties"
    untrusting.write_text("".join(f"{k}={other_ca if k == 'ssl.ca.location' else v}\n" for k, v in props.items()))
    settings = LoopSettings(kafka_bootstrap_servers=bootstrap, kafka_client_config=untrusting)
    with pytest.raises(BrokerUnavailable, match=rf"Kafka at {bootstrap} .*TLS failed.*{other_ca}"):
        ensure_topics(settings, [FLIGHT], timeout=10)


def _predictions(monitor: LoopSettings, topic: str) -> list[dict]:
    reader = TopicReader(monitor, topic)
    c = Consumer(monitor.kafka_config({"group.id": f"{acls.client_ids.SNAPSHOT_GROUP}", "enable.partition.eof": True,
                                       "enable.auto.commit": False, "isolation.level": "read_committed"}))
    parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(monitor.topic_partitions)]
    c.assign(parts)
    out, eof = [], set()
    try:
        while len(eof) < len(parts):
            msg = c.poll(5)
            assert msg is not None, "predictions topic did not reach its end"
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                eof.add(msg.partition())
                continue
            out.append(reader.loads(msg.value()))
    finally:
        c.close()
    return out


def _dag_test(env: dict[str, str], conf: dict) -> subprocess.CompletedProcess:
    airflow = str(Path(sys.executable).with_name("airflow"))
    return subprocess.run([airflow, "dags", "test", "retrain_flight_delay", "-c", json.dumps(conf)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=REPO)


def test_the_whole_loop_runs_on_sasl_ssl_and_keeps_every_secret_out(secured, tmp_path, scorer_in_thread, until,
                                                                    caplog, monkeypatch):
    cluster = secured.cluster
    secrets = {role: cluster.properties(role)["sasl.password"] for role in ("admin", "replayer", "loop", "scorer",
                                                                            "monitor")}
    flights = load_completed((1, 1), limit=14_000)
    topics = FLIGHT.topics.resolved(secured.admin)
    replay_frame(as_role(secured, "replayer"), flights.iloc[:10_000])

    # The DAG's task processes and its Kafka connection take the loop role's client file from the environment.
    monkeypatch.setenv("KAFKA_CLIENT_CONFIG", str(cluster.client_config("loop")))
    home = tmp_path / "airflow"
    env = {**os.environ, **airflow_env(AirflowConfig(home=home, kafka_bootstrap_servers=cluster.bootstrap_servers)),
           "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers, "TOPIC_PREFIX": secured.prefix,
           "LOOP_DATA_DIR": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "AIRFLOW_VAR_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"), "MIN_TRAINING_ROWS": "500", "EPOCHS": "3",
           "HOLDOUT_DAYS": "3", "FLIGHT_DELAY_GATE_FLOORS": '{"roc_auc": 0.5}', "RETRAIN_TASK_RETRIES": "0",
           "MODEL_SIGNING_KEY_FILE": str(secured.signing_key), "MODEL_SIGNING_KEY_ID": "secured-test",
           "MODEL_TRUSTED_KEYS_DIR": str(secured.trusted),
           "FLIGHT_DELAY_RETRAIN_SCHEDULE": "none"}
    connection = json.loads(env["AIRFLOW_CONN_KAFKA_DEFAULT"])["extra"]
    assert connection["security.protocol"] == "SASL_SSL" and connection["sasl.username"] == "loop"
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)

    scorer_settings = as_role(secured, "scorer", ScorerSettings, use_case="flight_delay", http_port=0,
                              delivery_mode="exactly_once", model_trusted_keys_dir=secured.trusted)
    monitor = as_role(secured, "monitor")
    with scorer_in_thread(scorer_settings, "secured-1") as scorer:
        first = _dag_test(env, {"rollout_timeout_s": 180})
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        until("the scorer serving v1", lambda: scorer.ready()[0], 60, every=0.5)
        until("the first 10,000 flights scored", lambda: len(_predictions(monitor, topics.predictions)) >= 10_000,
              120, every=2)

        # More flights, a forced second version: the scorer swaps to it while serving.
        replay_frame(as_role(secured, "replayer"), flights.iloc[10_000:12_000])
        second = _dag_test(env, {"rollout_timeout_s": 180, "force_promote": True,
                                 "force_reason": "secured loop test: hot swap"})
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        replay_frame(as_role(secured, "replayer"), flights.iloc[12_000:14_000])
        until("every flight scored", lambda: len(_predictions(monitor, topics.predictions)) >= 14_000, 180, every=2)

    predictions = _predictions(monitor, topics.predictions)
    per_flight = Counter(p["flight_id"] for p in predictions)
    assert len(per_flight) == 14_000 and set(per_flight.values()) == {1}  # none lost, none duplicated
    by_version = Counter(p["model_version"] for p in predictions)
    assert set(by_version) == {1, 2}, by_version
    # Flights replayed before the second run were scored by v1, those replayed after it went live by v2.
    version = {p["flight_id"]: p["model_version"] for p in predictions}
    assert {version[f] for f in flights.iloc[:12_000]["flight_id"]} == {1}
    assert {version[f] for f in flights.iloc[12_000:]["flight_id"]} == {2}

    # No role's password in any log, XCom (Airflow's database), MLflow store or artifact, snapshot or report,
    # nor in the envelopes and status reports on the topics.
    logs = first.stdout + first.stderr + second.stdout + second.stderr + caplog.text
    places = [p for p in tmp_path.rglob("*") if p.is_file()]
    records = b"".join(_raw(monitor, t) for t in (monitor.models_topic, monitor.status_topic))
    for role, secret in secrets.items():
        assert secret not in logs, role
        assert secret.encode() not in records, role
        leaked = [str(p) for p in places if secret.encode() in p.read_bytes()]
        assert leaked == [], (role, leaked)


def _raw(settings: LoopSettings, topic: str) -> bytes:
    c = Consumer(settings.kafka_config({"group.id": f"{acls.client_ids.MODELS_READER_GROUP}raw",
                                        "enable.partition.eof": True, "enable.auto.commit": False}))
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out = []
    try:
        while (msg := c.poll(5)) is not None:
            if msg.error() is not None:
                break
            out.append(msg.value())
    finally:
        c.close()
    return b"".join(out)


def test_topic_specs_cover_what_the_acls_name(secured):
    named = {g.name for g in acls.grants(secured.admin, [FLIGHT]) if g.resource == "topic"}
    assert named == {s.topic for s in topic_specs(secured.admin, [FLIGHT])}
