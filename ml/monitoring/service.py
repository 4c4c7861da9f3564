"""The live monitor of one use case: a small streaming job beside the scorers.

It reads the predictions topic, the shadow predictions topic and the labels topic side by side (partitions
assigned, nothing committed: the topics' retained history is its state, rebuilt at start), joins predictions
with their labels by the use case's key (``ml.monitoring.join``) and closes a window of live metrics every N
labelled events per version (``ml.monitoring.windows``). Each window goes to Prometheus (``/metrics``), to the
version's MLflow run (``live_<metric>`` at step = window index; ``shadow_live_<metric>`` for a shadow) and, for
the serving champion, through the policy (``ml.monitoring.policy``): roll back when the previous version does
better on the window's own events (scored again from their label rows, ``ml.monitoring.rescoring``), ask for a
retraining; a full window of events scored by both champion and shadow decides the shadow. Decisions are taken
once per version.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from ml import use_cases
from ml.client_ids import LIVE_MONITOR_GROUP
from ml.monitoring.actions import Actions
from ml.monitoring.join import Labelled, LabelJoin, Paired, Prediction, Stage
from ml.monitoring.label_rows import LabelRows
from ml.monitoring.policy import Comparison, MonitorDecision, judge_serving, judge_shadow
from ml.monitoring.rescoring import Rescorer
from ml.monitoring.settings import MonitorSettings
from ml.monitoring.windows import PairWindow, Window, Windows
from ml.registry import Registry
from ml.wire import TopicDecoder

log = logging.getLogger(__name__)

CONSUME_BATCH = 5000
LAG_EVERY_S = 5.0
TOPIC_RETRY_S = 30.0


class MonitorMetrics:
    """The monitor's Prometheus metrics, on a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.live = Gauge("monitor_live_metric", "Live metric of the last closed window, per version and stage.",
                          ["use_case", "stage", "version", "metric"], registry=r)
        self.psi = Gauge("monitor_feature_psi", "PSI of an input feature against the serving version's training "
                         "data, last window.", ["use_case", "version", "feature"], registry=r)
        self.labelled = Counter("monitor_labelled_predictions", "Predictions joined with their label.",
                                ["use_case", "stage", "version"], registry=r)
        self.windows = Counter("monitor_windows", "Windows of live metrics closed.", ["use_case", "stage"],
                               registry=r)
        self.decisions = Counter("monitor_decisions", "Decisions taken.", ["use_case", "action"], registry=r)
        self.pending = Gauge("monitor_pending", "Predictions or labels waiting for their other half.",
                             ["use_case", "kind"], registry=r)
        self.lag = Gauge("monitor_consumer_lag", "Records behind the end of each topic the monitor reads.",
                         ["topic"], registry=r)
        self.serving = Gauge("monitor_serving_version", "Version of the champion's latest predictions.",
                             ["use_case"], registry=r)


@dataclass
class VersionInfo:
    """What the monitor knows of a registered version (from MLflow)."""

    version: int
    run_id: str | None
    gate_value: float | None
    logged_steps: dict[str, int] = field(default_factory=dict)  # metric key -> last step already in MLflow
    reference: pd.DataFrame | None = None
    reference_loaded: bool = False


class Monitor:
    """One use case's monitor; ``run`` blocks until ``stop``."""

    def __init__(self, settings: MonitorSettings, *, registry: Registry | None = None,
                 actions: Actions | None = None) -> None:
        self.settings = s = settings
        self.uc = use_cases.selected(s)
        if self.uc.live is None:
            raise ValueError(f"use case {self.uc.name} declares no live spec: it cannot be monitored")
        self.spec = self.uc.live
        self.registry = registry or Registry(s)
        self.actions = actions or Actions(s, self.registry)
        self.policy = s.policy()
        self.metrics = MonitorMetrics()
        self.join = LabelJoin(max_pending=s.monitor_max_pending)
        self.windows = Windows(s.monitor_window_events, s.monitor_shadow_window_events)
        topics = self.uc.topics.resolved(s)
        self.topics: dict[str, Stage | None] = {topics.predictions: "champion",
                                                 topics.predictions + ".shadow": "shadow", topics.labels: None}
        self._decoders = {t: TopicDecoder(s, t, self.uc.label_contract if stage is None else
                                          self.uc.prediction_contract) for t, stage in self.topics.items()}
        self._label_topic = topics.labels
        self._stop = threading.Event()
        self._versions: dict[int, VersionInfo] = {}
        self._served: list[int] = []  # champion versions in the order they served (each change of version)
        self._live: dict[int, list[float]] = {}  # champion version -> its windows' live metric
        self._recent_rows: list[pa.Table] = []  # label rows since the last champion window (drift)
        self._recent_count = 0
        self._label_rows = LabelRows(self.spec.key, s.monitor_label_rows)  # windows scored again by key
        self.rescorer = Rescorer(self.uc, self.registry, self.spec.metric)
        self._rolled_back: dict[int, bool] = {}  # version -> rolled back (by us, or found in MLflow)
        self._retrain_asked: dict[int, float] = {}
        self.decisions: list[MonitorDecision] = []
        self._assigned: set[str] = set()
        self._last_lag = 0.0
        self._last_topic_check = 0.0
        self.http_port: int | None = None
        self.labels_read = 0  # label records read (the benchmarks' measure of the monitor's lag)

    # ------------------------------------------------------------ loop

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        server = None
        if self.settings.monitor_http_port is not None:
            server, _ = start_http_server(self.settings.monitor_http_port, registry=self.metrics.registry)
            self.http_port = server.server_address[1]
            log.info("monitor of %s: /metrics on port %d", self.uc.name, self.http_port)
        consumer = Consumer(self.settings.kafka_config({
            # Required by the client; partitions are assigned and nothing is committed.
            "group.id": LIVE_MONITOR_GROUP, "enable.auto.commit": False, "enable.partition.eof": False,
            # Only committed records: an aborted scorer transaction's predictions were never delivered.
            "isolation.level": "read_committed",
        }))
        try:
            while not self._stop.is_set():
                self._assign_new(consumer)
                self.process(consumer.consume(CONSUME_BATCH, timeout=0.5))
                if time.monotonic() - self._last_lag > LAG_EVERY_S:
                    self._update_lag(consumer)
        finally:
            consumer.close()
            if server is not None:
                server.shutdown()

    def _assign_new(self, consumer: Consumer) -> None:
        """Assign the partitions of the topics that exist (the shadow topic may come later)."""
        if len(self._assigned) == len(self.topics) or time.monotonic() - self._last_topic_check < TOPIC_RETRY_S \
                and self._assigned:
            return
        self._last_topic_check = time.monotonic()
        start = OFFSET_BEGINNING if self.settings.monitor_start == "earliest" else OFFSET_END
        new = []
        for topic in self.topics:
            if topic in self._assigned:
                continue
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                log.info("monitor of %s: topic %s not there yet", self.uc.name, topic)
                continue
            new += [TopicPartition(topic, p, start) for p in sorted(meta.partitions)]
            self._assigned.add(topic)
        if new:
            consumer.incremental_assign(new)
            log.info("monitor of %s reading %s from the %s", self.uc.name,
                     sorted({tp.topic for tp in new}), self.settings.monitor_start)

    def _update_lag(self, consumer: Consumer) -> None:
        self._last_lag = time.monotonic()
        behind: dict[str, int] = {}
        for tp in consumer.assignment():
            try:
                _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                (pos,) = consumer.position([tp])
            except KafkaException:
                continue
            if pos.offset >= 0:
                behind[tp.topic] = behind.get(tp.topic, 0) + max(0, high - pos.offset)
        for topic, n in behind.items():
            self.metrics.lag.labels(topic).set(n)
        for kind, n in self.join.pending.items():
            self.metrics.pending.labels(self.uc.name, kind).set(n)

    # ------------------------------------------------------------ records

    def process(self, msgs: Iterable[Message]) -> None:
        """Join one batch of records of the three topics, closing the windows they complete."""
        by_topic: dict[str, list[Message]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("monitor of %s: %s", self.uc.name, err)
                continue
            by_topic.setdefault(m.topic(), []).append(m)
        for topic, batch in by_topic.items():
            decoded = self._decoders[topic].decode([m.value() for m in batch])
            if decoded.rejected:
                log.warning("monitor of %s: %d record(s) of %s refused by their contract (first: %s)", self.uc.name,
                            len(decoded.rejected), topic, decoded.rejected[0].reason)
            stage = self.topics[topic]
            if stage is None:
                self._labels(decoded.table, [batch[i] for i in decoded.accepted])
            else:
                self._predictions(stage, decoded.table)

    def _predictions(self, stage: Stage, table: pa.Table) -> None:
        spec = self.spec
        keys = table.column(spec.key).to_pylist()
        versions = table.column("model_version").to_pylist()
        scores = table.column(spec.score).to_numpy(zero_copy_only=False).astype("float64")
        decisions = table.column(spec.decision).to_pylist()
        scored = table.column("scored_at").cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6
        if stage == "champion" and versions:
            for v in dict.fromkeys(versions):
                if not self._served or self._served[-1] != v:  # every change, a rollback to an older one too
                    self._served.append(v)
                    log.info("monitor of %s: v%d is serving (champion predictions)", self.uc.name, v)
            self.metrics.serving.labels(self.uc.name).set(versions[-1])
        for i, key in enumerate(keys):
            p = Prediction(key, versions[i], float(scores[i]), bool(decisions[i]), float(scored[i]))
            self._feed(self.join.prediction(stage, p))

    def _labels(self, table: pa.Table, msgs: list[Message]) -> None:
        self.labels_read += len(msgs)
        labels = table.column(self.uc.label).to_pylist()
        keys = table.column(self.spec.key).to_pylist()
        known = [i for i, y in enumerate(labels) if y is not None]
        if len(known) < len(labels):
            table = table.take(pa.array(known, pa.int64()))
        self._recent_rows.append(table)
        self._recent_count += table.num_rows
        self._label_rows.add(table)
        while self._recent_count - self._recent_rows[0].num_rows >= self.settings.monitor_drift_rows:
            self._recent_count -= self._recent_rows.pop(0).num_rows
        for i in known:
            self._feed(self.join.label(keys[i], bool(labels[i]), msgs[i].timestamp()[1] / 1000))

    def _feed(self, items: list[Labelled | Paired]) -> None:
        for item in items:
            if isinstance(item, Labelled):
                self.metrics.labelled.labels(self.uc.name, item.stage, str(item.prediction.version)).inc()
            closed = self.windows.add(item)
            if isinstance(closed, Window):
                self._on_window(closed)
            elif isinstance(closed, PairWindow):
                self._on_pairs(closed)

    # ------------------------------------------------------------ windows

    def _on_window(self, w: Window) -> None:
        m = self.uc.live_metrics(w.y, w.scores, w.decisions)
        value = m[self.spec.metric]
        info = self._info(w.version)
        drift = self._drift(info) if w.stage == "champion" else {}
        self.metrics.windows.labels(self.uc.name, w.stage).inc()
        for k, v in m.items():
            self.metrics.live.labels(self.uc.name, w.stage, str(w.version), k).set(v)
        for feature, v in drift.items():
            self.metrics.psi.labels(self.uc.name, str(w.version), feature).set(v)
        prefix = "live_" if w.stage == "champion" else "shadow_live_"
        self._log_mlflow(info, w.index, {**{prefix + k: v for k, v in m.items() if not math.isnan(v)},
                                         prefix + "events": float(len(w.y)),
                                         **{f"live_psi_{f}": v for f, v in drift.items()}})
        log.info("monitor of %s: %s v%d window %d: %s %.4f over %d labelled events (scored %s to %s)%s",
                 self.uc.name, w.stage, w.version, w.index, self.spec.metric, value, len(w.y),
                 _ts(w.first_scored_at), _ts(w.last_scored_at),
                 f", max PSI {max(drift.values()):.3f}" if drift else "")
        if w.stage != "champion":
            return
        self._live.setdefault(w.version, []).append(value)
        if not self._served or w.version != self._served[-1] or self._rolled_back.get(w.version):
            return  # a version no longer serving (or rolled back, still in flight): recorded, not acted on
        previous = self._previous(w.version)
        comparison = self._compare(w, previous)
        decision = judge_serving(
            self.policy, use_case=self.uc.name, metric=self.spec.metric, higher_is_better=self.spec.higher_is_better,
            version=w.version, value=value, events=len(w.y), previous_version=previous, comparison=comparison,
            gate_value=info.gate_value, drift=drift)
        if decision is not None:
            self._decide(decision)

    def _on_pairs(self, pw: PairWindow) -> None:
        metric = self.spec.metric
        champion = self.uc.live_metrics(pw.y, pw.champion_scores, pw.champion_decisions)[metric]
        shadow = self.uc.live_metrics(pw.y, pw.shadow_scores, pw.shadow_decisions)[metric]
        self.windows.drop_pairs(pw.shadow_version)
        self._decide(judge_shadow(self.policy, use_case=self.uc.name, metric=metric,
                                  higher_is_better=self.spec.higher_is_better, shadow_version=pw.shadow_version,
                                  champion_versions=pw.champion_versions, shadow_value=shadow,
                                  champion_value=champion, events=len(pw.y)))

    def _decide(self, d: MonitorDecision) -> None:
        shadow_verdict = d.action in ("promote_shadow", "retire_shadow")
        if d.action == "retrain":
            last = self._retrain_asked.get(d.model_version)
            if last is not None and time.monotonic() - last < self.settings.monitor_retrain_cooldown_s:
                return
            self._retrain_asked[d.model_version] = time.monotonic()
        elif any(self.actions.decided(d.model_version, a) for a in
                 (("promote_shadow", "retire_shadow") if shadow_verdict else ("rollback",))):
            return  # decided before (this process, or before a restart)
        self.decisions.append(d)
        if d.action == "rollback":
            self._rolled_back[d.model_version] = True
        self.metrics.decisions.labels(self.uc.name, d.action).inc()
        self.actions.take(d)

    # ------------------------------------------------------------ versions

    def _info(self, version: int) -> VersionInfo:
        info = self._versions.get(version)
        if info is None:
            run_id, gate = None, None
            try:
                client = self.registry.client()
                run_id = client.get_model_version(self.registry.name, str(version)).run_id
                gate = client.get_run(run_id).data.metrics.get(f"holdout_{self.spec.metric}")
            except Exception as e:  # noqa: BLE001 - an unregistered version is monitored without MLflow
                log.warning("monitor of %s: v%d not found in MLflow (%s): live metrics not logged there",
                            self.uc.name, version, e)
            info = self._versions[version] = VersionInfo(version, run_id, gate)
        return info

    def _log_mlflow(self, info: VersionInfo, step: int, values: dict[str, float]) -> None:
        """Log a window's metrics at ``step``, skipping those already logged at that step (a restart re-reads
        the history and closes the same windows again)."""
        if info.run_id is None:
            return
        client = self.registry.client()
        fresh = {}
        for key, value in values.items():
            if key not in info.logged_steps:
                history = client.get_metric_history(info.run_id, key)
                info.logged_steps[key] = max((h.step for h in history), default=-1)
            if step > info.logged_steps[key]:
                fresh[key] = value
                info.logged_steps[key] = step
        if fresh:
            self.registry.log_metrics(info.run_id, fresh, step=step)

    def _previous(self, version: int) -> int | None:
        """The version to roll back to: the champion that served before ``version`` and was not rolled back
        itself; from MLflow when this monitor did not see one serve."""
        for v in reversed(self._served[:-1]):
            if v != version and not self._was_rolled_back(v):
                return v
        try:
            versions = self.registry.client().search_model_versions(f"name = '{self.registry.name}'")
        except Exception as e:  # noqa: BLE001
            log.warning("monitor of %s: cannot list versions (%s)", self.uc.name, e)
            return None
        older = sorted((int(mv.version) for mv in versions if int(mv.version) < version
                        and not {"monitor.rollback", "monitor.retire_shadow"} & set(mv.tags or {})), reverse=True)
        return older[0] if older else None

    def _was_rolled_back(self, version: int) -> bool:
        """Whether ``version`` was rolled back: asked of MLflow once per version, then kept (``_decide`` records
        this monitor's own rollbacks)."""
        if version not in self._rolled_back:
            self._rolled_back[version] = self.actions.decided(version, "rollback")
        return self._rolled_back[version]

    def _compare(self, w: Window, previous: int | None) -> Comparison | None:
        """``w``'s version and ``previous`` on the window's own events (logged), or None."""
        if previous is None:
            return None
        rows, found = self._label_rows.rows(w.keys)
        comparison = self.rescorer.compare(w, previous, rows, found)
        if comparison is not None:
            log.info("monitor of %s: v%d %s %.4f against v%d's %.4f on the same %d labelled events of window %d",
                     self.uc.name, w.version, self.spec.metric, comparison.value, previous, comparison.previous_value,
                     comparison.events, w.index)
        return comparison

    def _drift(self, info: VersionInfo) -> dict[str, float]:
        """PSI of the recent label rows against the version's training rows (its lineage snapshots on disk)."""
        from ml.validation import drift

        if not info.reference_loaded:
            info.reference_loaded = True
            info.reference = _training_rows(self.settings, self.uc, self.registry, info)
        rows, self._recent_rows, self._recent_count = self._recent_rows, [], 0
        if info.reference is None or not rows:
            return {}
        suite = self.uc.validation_suite()
        current = pa.concat_tables(rows).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        return drift(current, info.reference, suite.policy.psi_bins, numeric=suite.numeric_drift,
                     categorical=suite.categorical_drift, derive=suite.derive)


def _training_rows(settings: MonitorSettings, uc, registry: Registry, info: VersionInfo) -> pd.DataFrame | None:
    """The drift reference of ``info``'s version: a bounded sample of its training rows, only the columns its use
    case's drift reads, as validation samples them (a monitor lives long and holds one per version it has seen)."""
    from ml.pipeline import training_rows
    from ml.validation import DRIFT_SAMPLE_ROWS

    if info.run_id is None:
        return None
    try:
        lineage = registry.lineage(info.run_id)
    except Exception as e:  # noqa: BLE001
        log.warning("monitor of %s: no lineage for v%d (%s): drift not computed", uc.name, info.version, e)
        return None
    columns = uc.validation_suite().reference_columns
    return training_rows(settings, uc, info.version, lineage, columns=None if columns is None else list(columns),
                         sample=DRIFT_SAMPLE_ROWS)


def _ts(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch_s))
