"""Faults on a real three-node KRaft cluster (topics replicated 3 times, min.insync.replicas 2, producers acks=all)
while a scorer scores at load: the leader of an input partition killed and restarted, a rolling restart of every
broker during a hot swap, one of three scorer replicas killed during a swap, and a DAG run whose publish meets a
dead leader of the `models` partition.

Each test checks what must hold (nothing lost; nothing duplicated under exactly_once). With CLUSTER_FAULTS_REPORT
set, each also appends its figures to that file as a JSON line (benchmarks/cluster_faults.py makes the table).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.airflow.local import AirflowConfig, airflow_env
from ml.publish import publish, read_envelopes
from ml.settings import LoopSettings
from ml.topics import ensure_topics
from ml.use_cases import get
from ml.wire import TopicReader
from scoring_service.config import ScorerSettings
from use_cases.flight_delay.replay import replay_frame
from use_cases.flight_delay.source import load_completed

sys.path.insert(0, str(Path(__file__).parent))
from test_scorer import (  # noqa: E402 - the scorer tests' helpers, on this cluster
    MODEL, SIGNER, _owned, artifacts, committed, contract, end, envelope, events, flights, high_watermarks,
    loop_settings, produce, spawn, terminate, trust, wait_for)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FLIGHT = get("flight_delay")
PUBLISH_STARTS = "[DAG TEST] starting task_id=publish"  # what `airflow dags test` logs as a task starts
__all__ = ["artifacts", "contract", "events", "flights"]  # module fixtures shared with test_scorer


@pytest.fixture(scope="module")
def trusted_dir(tmp_path_factory) -> Path:
    return trust(tmp_path_factory.mktemp("trusted"), SIGNER)


@pytest.fixture
def settings(kafka_cluster, trusted_dir) -> ScorerSettings:
    """The flight topics under a prefix of this test, created by the loop's own code: on three brokers they are
    replicated 3 times with min.insync.replicas 2."""
    u = uuid.uuid4().hex[:8]
    s = ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers=kafka_cluster.bootstrap_servers,
                       topic_prefix=f"f{u}.", group_id=f"scorer-{u}", model_name=MODEL, batch_size=200,
                       batch_max_wait_ms=50, http_port=0, model_trusted_keys_dir=trusted_dir)
    ensure_topics(LoopSettings(kafka_bootstrap_servers=s.kafka_bootstrap_servers, topic_prefix=s.topic_prefix),
                  [FLIGHT], timeout=30)
    return s


@pytest.fixture
def report(request):
    """``report(**figures)``: one JSON line in $CLUSTER_FAULTS_REPORT (when set) naming this test."""
    def write(**figures) -> None:
        path = os.environ.get("CLUSTER_FAULTS_REPORT")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps({"test": request.node.name, **figures}) + "\n")
    return write


@pytest.fixture(autouse=True)
def every_node_running(kafka_cluster):
    """Each test starts and leaves with all three nodes up and every partition fully replicated."""
    yield
    for node in kafka_cluster.nodes:
        if node.running_pid() is None:
            node.start()
    wait_fully_replicated(kafka_cluster)


def leader_of(kafka_cluster, topic: str, partition: int) -> int:
    meta = AdminClient(kafka_cluster.client_settings()).list_topics(topic, timeout=10)
    return meta.topics[topic].partitions[partition].leader


def coordinator_of(kafka_cluster, group: str) -> int:
    admin = AdminClient(kafka_cluster.client_settings())
    return admin.describe_consumer_groups([group])[group].result(timeout=10).coordinator.id


def input_leader_to_kill(kafka_cluster, s: ScorerSettings) -> int:
    """The leader of an input partition, the scorer's group coordinator's node if it leads one (the harder case:
    the group and the partition move at once)."""
    meta = AdminClient(kafka_cluster.client_settings()).list_topics(s.input_topic, timeout=10)
    leaders = {pm.leader for pm in meta.topics[s.input_topic].partitions.values()}
    coordinator = coordinator_of(kafka_cluster, s.group_id)
    return coordinator if coordinator in leaders else leader_of(kafka_cluster, s.input_topic, 0)


def node_by_id(kafka_cluster, node_id: int):
    return next(node for node in kafka_cluster.nodes if node.cfg.node_id == node_id)


def under_replicated(kafka_cluster) -> list[str]:
    """Partitions (every topic, the internal ones too) whose in-sync replicas are fewer than their replicas."""
    meta = AdminClient({**kafka_cluster.client_settings(), "log_level": 0}).list_topics(timeout=10)
    return [f"{t}[{p}]" for t, tm in meta.topics.items() for p, pm in tm.partitions.items()
            if len(pm.isrs) < len(pm.replicas) or pm.leader < 0]


def wait_fully_replicated(kafka_cluster, timeout: float = 120.0) -> None:
    wait_for(lambda: not under_replicated(kafka_cluster), timeout, "every partition back in sync on three nodes")


def outputs(s: ScorerSettings, count: int, timeout: float = 120.0) -> list[tuple[dict, int]]:
    """Committed predictions from the beginning with their record timestamps (ms), once ``count`` are there and
    2 s passed without more."""
    reader = TopicReader(s, s.output_topic)
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "isolation.level": "read_committed"})
    c.subscribe([s.output_topic])
    out, deadline, quiet_since = [], time.monotonic() + timeout, time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = c.consume(1000, 0.2)
            for m in batch:
                assert m.error() is None, m.error()
                out.append((reader.loads(m.value()), m.timestamp()[1]))
            if batch:
                quiet_since = time.monotonic()
            elif len(out) >= count and time.monotonic() - quiet_since > 2.0:
                break
    finally:
        c.close()
    return out


def tally(predictions: list[tuple[dict, int]], n_inputs: int) -> dict:
    """Lost (inputs without a prediction) and duplicated (extra predictions) of ``n_inputs`` inputs."""
    positions = Counter((p["source_partition"], p["source_offset"]) for p, _ in predictions)
    return {"inputs": n_inputs, "predictions": len(predictions), "lost": n_inputs - len(positions),
            "duplicated": sum(n - 1 for n in positions.values())}


def longest_pause_s(predictions: list[tuple[dict, int]], after_ms: float) -> float:
    """The longest pause (s) between consecutive predictions of one input partition, written after ``after_ms``:
    how long the fault held a partition's stream up (the others may go on meanwhile)."""
    by_partition: dict[int, list[int]] = {}
    for p, ts in predictions:
        if ts >= after_ms - 1000:
            by_partition.setdefault(p["source_partition"], []).append(ts)
    gaps = [int(np.max(np.diff(np.sort(stamps)))) for stamps in by_partition.values() if len(stamps) > 1]
    return round(max(gaps, default=0) / 1000, 2)


def check(figures: dict, mode: str) -> None:
    assert figures["lost"] == 0, figures
    if mode == "exactly_once":
        assert figures["duplicated"] == 0, figures


class Supervised:
    """A scorer process (``python -m scoring_service``) started again whenever it exits on its own, as a
    StatefulSet or compose's ``restart: unless-stopped`` does: a replica stops on a fatal Kafka error."""

    def __init__(self, s: ScorerSettings, log_path: Path) -> None:
        self.s, self.log_path, self.restarts = s, log_path, 0
        self.proc = spawn(s, log_path)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            if self.proc.poll() is not None:
                self.restarts += 1
                self.proc = spawn(self.s, self.log_path)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        try:
            terminate(self.proc)
        finally:
            end(self.proc)


@contextlib.contextmanager
def scoring_at_load(s: ScorerSettings, stream, rate: float, first_model, log_path: Path):
    """``first_model`` published, a supervised scorer consuming every partition, then ``stream`` produced at ``rate``
    on a thread while the block runs (it sees the scorer); on leaving, the whole stream delivered and committed, and
    the scorer stopped."""
    publish(loop_settings(s), first_model)
    load = threading.Thread(target=produce, args=(s, s.input_topic, stream, rate))
    scorer = Supervised(s, log_path)
    try:
        wait_for(lambda: _owned(scorer.log_path) == {0, 1, 2}, 180, "the scorer to consume")
        load.start()
        yield scorer
        load.join(60)
        wait_for(lambda: committed(s) == high_watermarks(s), 180, "the scorer to finish the stream")
    finally:
        scorer.stop()
        if load.is_alive():
            load.join(60)


@pytest.mark.parametrize("mode", ["exactly_once", "at_least_once"])
def test_the_leader_of_an_input_partition_killed_mid_stream_then_restarted(
        kafka_cluster, settings, events, contract, artifacts, mode, tmp_path, report):
    s = settings.model_copy(update={"delivery_mode": mode, "replica_name": "r"})
    stream = events[:6000]
    with scoring_at_load(s, stream, 1000.0, envelope(1, artifacts["a"], contract.to_dict()),
                         tmp_path / "scorer.log") as scorer:
        time.sleep(2)
        victim = node_by_id(kafka_cluster, input_leader_to_kill(kafka_cluster, s))
        killed_at = time.time() * 1000
        assert victim.kill()
        time.sleep(3)  # the stream goes on meanwhile: a new leader takes the dead one's partitions
        victim.start()
    predictions = outputs(s, len(stream))
    figures = tally(predictions, len(stream)) | {"recovery_s": longest_pause_s(predictions, killed_at),
                                                 "scorer_restarts": scorer.restarts}
    report(fault="leader of an input partition SIGKILLed, restarted 3 s later", mode=mode, **figures)
    check(figures, mode)


@pytest.mark.parametrize("mode", ["exactly_once", "at_least_once"])
def test_a_rolling_restart_of_every_broker_while_a_model_is_published_and_swapped(
        kafka_cluster, settings, events, contract, artifacts, mode, tmp_path, report):
    s = settings.model_copy(update={"delivery_mode": mode, "replica_name": "r"})
    stream = events[:6000]
    started_at = time.time() * 1000
    with scoring_at_load(s, stream, 400.0, envelope(1, artifacts["a"], contract.to_dict()),
                         tmp_path / "scorer.log") as scorer:
        for i, node in enumerate(kafka_cluster.nodes):
            assert node.stop()  # SIGTERM: a controlled shutdown hands its leaderships over first
            if i == 0:
                publish(loop_settings(s), envelope(2, artifacts["b"], contract.to_dict()))
            node.start()
            wait_fully_replicated(kafka_cluster)
        wait_for(lambda: f"{MODEL} v2 live" in scorer.log(), 120, "the scorer to serve v2")
    predictions = outputs(s, len(stream))
    figures = tally(predictions, len(stream)) | {"recovery_s": longest_pause_s(predictions, started_at),
                                                 "scorer_restarts": scorer.restarts}
    report(fault="rolling restart of the 3 brokers during a publish and swap", mode=mode, **figures)
    check(figures, mode)
    assert set(Counter(p["model_version"] for p, _ in predictions)) == {1, 2}


def test_one_of_three_replicas_killed_during_a_swap_hands_its_partitions_over(
        kafka_cluster, settings, events, contract, artifacts, tmp_path, report):
    # A short session: the dead replica's partition moves within the test (the brokers stay up here).
    s = settings.model_copy(update={"delivery_mode": "exactly_once", "session_timeout_ms": 6000})
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    stream = events[:6000]
    names = ("a", "b", "c")
    logs = {name: tmp_path / f"{name}.log" for name in names}
    replicas = {name: spawn(s.model_copy(update={"replica_name": name}), logs[name]) for name in names}
    load = threading.Thread(target=produce, args=(s, s.input_topic, stream, 500.0))
    try:
        wait_for(lambda: all(len(_owned(logs[n])) == 1 for n in names), 180, "each replica to own a partition")
        load.start()
        time.sleep(2)
        publish(loop_settings(s), envelope(2, artifacts["b"], contract.to_dict()))
        killed_at = time.time() * 1000
        replicas["b"].kill()  # SIGKILL while the swap is under way
        replicas["b"].wait(10)
        load.join(60)
        wait_for(lambda: _owned(logs["a"]) | _owned(logs["c"]) == {0, 1, 2}, 60, "the dead replica's partition to move")
        wait_for(lambda: committed(s) == high_watermarks(s), 120, "the survivors to finish the stream")
        terminate(replicas["a"])
        terminate(replicas["c"])
    finally:
        end(*replicas.values())
        if load.is_alive():
            load.join(60)
    # The outputs past the dead replica's open transaction are readable once the broker has aborted it.
    predictions = outputs(s, len(stream), timeout=120)
    figures = tally(predictions, len(stream)) | {"recovery_s": longest_pause_s(predictions, killed_at)}
    report(fault="1 of 3 scorer replicas SIGKILLed during a swap", mode="exactly_once", **figures)
    check(figures, "exactly_once")
    for name in ("a", "c"):
        assert f"{MODEL} v2 live" in logs[name].read_text(), f"replica {name} did not go live on v2"


def test_a_dag_run_publishes_once_while_the_models_leader_is_down(kafka_cluster, settings, scorer_in_thread,
                                                                  signing_keys, tmp_path, report):
    """The publish task meets a dead leader of the `models` partition (killed as the task starts): it retries (the
    producer, or Airflow's retry of the task) and the version is on the topic exactly once."""
    loop = LoopSettings(kafka_bootstrap_servers=settings.kafka_bootstrap_servers, topic_prefix=settings.topic_prefix,
                        use_case="flight_delay", **signing_keys.loop)
    replay_frame(loop, load_completed((1, 1), limit=4000))
    home = tmp_path / "airflow"
    env = {**os.environ, **airflow_env(AirflowConfig(home=home, kafka_bootstrap_servers=loop.kafka_bootstrap_servers)),
           "KAFKA_BOOTSTRAP_SERVERS": loop.kafka_bootstrap_servers, "TOPIC_PREFIX": loop.topic_prefix,
           "LOOP_DATA_DIR": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "AIRFLOW_VAR_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"), "MIN_TRAINING_ROWS": "500", "EPOCHS": "2",
           "HOLDOUT_DAYS": "3", "FLIGHT_DELAY_GATE_FLOORS": '{"roc_auc": 0.5}', "RETRAIN_TASK_RETRIES": "2",
           "RETRAIN_TASK_RETRY_DELAY_S": "5", "FLIGHT_DELAY_RETRAIN_SCHEDULE": "none", **signing_keys.env}
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    scorer_settings = settings.model_copy(update={"model_name": "flight_delay", "delivery_mode": "exactly_once",
                                                  "model_trusted_keys_dir": signing_keys.trusted_dir})
    models_leader = node_by_id(kafka_cluster, leader_of(kafka_cluster, loop.models_topic, 0))
    with scorer_in_thread(scorer_settings, "dag-faults"):
        run = subprocess.Popen([airflow, "dags", "test", "retrain_flight_delay", "-c",
                                json.dumps({"rollout_timeout_s": 180})], env=env, cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, killed_at = [], None
        for line in run.stdout:
            output.append(line)
            if killed_at is None and PUBLISH_STARTS in line:
                killed_at = time.time() * 1000
                assert models_leader.kill()
        run.wait(60)
        assert run.returncode == 0, "".join(output[-60:])
    assert killed_at is not None, "the publish task never started: " + "".join(output[-60:])
    (tmp_path / "dag-run.log").write_text("".join(output))
    versions = [e.model_version for e in read_envelopes(loop)]
    published_at = [ts for ts in record_times(loop, loop.models_topic)]
    published = [line for line in output if "published flight_delay v1" in line]
    report(fault="models partition leader SIGKILLed as the publish task starts", mode="dag run",
           inputs=1, predictions=len(versions), lost=int(1 not in versions),
           duplicated=len(versions) - len(set(versions)),
           recovery_s=round((published_at[-1] - killed_at) / 1000, 2) if published_at else None)
    assert versions == [1], versions
    assert len(published) == 1, published
    # Written after its partition's leader was killed, by another leader.
    assert published_at[-1] > killed_at
    assert leader_of(kafka_cluster, loop.models_topic, 0) != models_leader.cfg.node_id


def record_times(settings: LoopSettings, topic: str) -> list[int]:
    """The timestamps (ms) of the records of partition 0 of ``topic``."""
    c = Consumer(settings.kafka_config({"group.id": f"times-{uuid.uuid4().hex[:8]}", "enable.partition.eof": True,
                                        "enable.auto.commit": False}))
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out = []
    try:
        while (msg := c.poll(10)) is not None and msg.error() is None:
            out.append(msg.timestamp()[1])
    finally:
        c.close()
    return out
