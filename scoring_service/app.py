"""The scoring loop: consume the use case's input topic in batches, score each batch with the serving model (and
the shadow model, if one is live: its predictions go to the shadow topic in the same delivery), deliver outputs and
dead letters, commit input offsets; with the model watcher and ops server beside it.

No partition is consumed before a model is live: the consumer subscribes only once the first valid model has
gone live (and the models topic's history has been read, so a shadow chosen at start scores the first events too),
so nothing is read, dropped or committed without a model.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from threadpoolctl import threadpool_limits

from ml import use_cases
from ml.wire import Framing, TopicDecoder
from scoring_service.batching import Cadence, collect
from scoring_service.config import ScorerSettings
from scoring_service.model_watcher import ModelSlot, ModelWatcher
from scoring_service.ops import Metrics, OpsServer
from scoring_service.positions import NextOffsets
from scoring_service.scoring import InputBatch, OutputFrames, ShadowFailure, score_batch
from scoring_service.sink import BatchAborted, InFlight, Record, Sink

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 1.0
# With no input, the loop wakes this often (liveness tick, commits, stop requests); the first record to
# arrive ends the wait at once.
IDLE_WAIT_S = 0.1
# How long one request for committed offsets may wait (it is repeated while they are unstable).
COMMITTED_WAIT_S = 5.0
# Errors reading committed offsets that pass: an open transaction's offsets not stable yet, a coordinator moving,
# loading or out of reach.
COMMITTED_RETRIABLE = frozenset({
    KafkaError._TIMED_OUT, KafkaError._WAIT_COORD, KafkaError._TRANSPORT, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.UNSTABLE_OFFSET_COMMIT, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR})
# How long a stopping replica waits for its LeaveGroup to be sent before it closes anyway.
LEAVE_TIMEOUT_S = 5.0
# A shadow failing batch after batch is logged at most this often (each failure is counted).
SHADOW_FAILURE_LOG_S = 30.0


class FatalErrors:
    """The consumer's ``error_cb``. librdkafka reports a fatal consumer error (a static member fenced, by a newer
    instance or, after a group coordinator failover, by its own earlier join) here and not through consume(); the
    scoring loop raises it, and the orchestrator restarts the process, which rejoins under the same name."""

    def __init__(self) -> None:
        self.fatal: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        if _is_fatal(err) and self.fatal is None:
            self.fatal = err

    def raise_if_fatal(self) -> None:
        if self.fatal is not None:
            _stop_on(self.fatal)


def _is_fatal(err: KafkaError) -> bool:
    # The error event itself carries the code _FATAL; fatal() is set only on errors fetched from the client.
    return err.fatal() or err.code() == KafkaError._FATAL


def _stop_on(err: KafkaError) -> NoReturn:
    log.error("fatal consumer error, stopping (restarted, the replica rejoins under its name): %s", err.str())
    raise KafkaException(err)


def consumer_config(settings: ScorerSettings, client_id: str, errors: FatalErrors | None = None,
                    on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] | None = None) -> dict:
    config = settings.kafka_config({
        "group.id": settings.group_id,
        "client.id": client_id,
        # We own the offsets: committed only once the batch's outputs are delivered (or in its transaction).
        "enable.auto.commit": False,
        # A new group starts from the beginning: records produced before the first scorer are scored too.
        "auto.offset.reset": "earliest",
        # Inputs written by transactional producers count only once committed; also required for EOS chains.
        "isolation.level": "read_committed",
        # The classic group protocol: its session timeout is the client's to choose (the consumer protocol's is
        # the broker's, 45 s at the least by default). A replica that dies for good is replaced this soon.
        "session.timeout.ms": settings.session_timeout_ms,
        # Members learn of a rebalance from a heartbeat's answer: the interval bounds a hand-over's pause (see
        # _pace_heartbeats). A heartbeat is a small request: 20 a second per replica at 50 ms.
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        # A fetch is answered once 1 MiB is there or half a batch interval has passed, whichever first: a
        # live stream costs the broker a bounded number of fetches, not one per record batch it receives.
        "fetch.wait.max.ms": max(1, settings.batch_max_wait_ms // 2),
        "fetch.min.bytes": 1 << 20,
        # A commit's outcome: the at_least_once sink resends what was not confirmed.
        "on_commit": on_commit or _log_commit_failure,
    })
    if errors is not None:
        config["error_cb"] = errors
    if settings.group_instance_id is not None:
        # A static member: a replica restarted under the same name gets its partitions back at once, without a
        # rebalance, and fences the member it replaces (a zombie of it can commit nothing).
        config["group.instance.id"] = settings.group_instance_id
    return config


def _raise_if_fatal(msgs: Sequence[Message]) -> None:
    """Raise the first fatal error among ``msgs``: librdkafka reports a static member fenced (by a newer instance,
    or by its own earlier join after a coordinator restart) as an error event among the fetched records, and the
    consumer reads nothing after it; the process stops and its orchestrator restarts it under the same name."""
    for m in msgs:
        err = m.error()
        if err is not None and _is_fatal(err):
            _stop_on(err)


def _log_commit_failure(err, partitions: list[TopicPartition]) -> None:
    """Result of an asynchronous offset commit: a failure costs re-scored records, never lost ones."""
    if err is not None:
        log.warning("offset commit of %s failed (%s): those records may be scored again",
                    [(tp.topic, tp.partition, tp.offset) for tp in partitions], err)


def leave_group(consumer: Consumer, settings: ScorerSettings) -> None:
    """Leave the group so the others take our partitions now. A static member's close() alone does not (its
    partitions wait for its session to time out); unsubscribe() does once the revocation has been served,
    which these polls do, until librdkafka forgets the member id. A member fenced meanwhile (a fatal
    consumer error, e.g. after a coordinator's restart) is in the group no more: there is nothing to leave."""
    try:
        consumer.unsubscribe()
    except KafkaException as e:
        if e.args[0].code() != KafkaError._FATAL:
            raise
        log.warning("group %s: fenced while stopping (%s), not a member any more: nothing to leave",
                    settings.group_id, e.args[0].str())
        return
    deadline = time.monotonic() + LEAVE_TIMEOUT_S
    while consumer.memberid() and time.monotonic() < deadline:
        consumer.poll(0.01)  # records still buffered are dropped: uncommitted, their next owner reads them
    if consumer.memberid():
        log.warning("group %s: no leave within %.0f s; partitions move when the session times out",
                    settings.group_id, LEAVE_TIMEOUT_S)
    else:
        log.info("left group %s as %s", settings.group_id, settings.group_instance_id or "a member")


class Scorer:
    """One scorer replica; ``run`` blocks until ``stop`` (or a fatal error), then shuts down cleanly."""

    def __init__(self, settings: ScorerSettings, scorer_id: str | None = None) -> None:
        self.settings = settings
        self.scorer_id = scorer_id or f"{settings.replica_name}-{os.getpid()}"
        self.metrics = Metrics()
        self.use_case = use_cases.get(settings.use_case)
        self.slot = ModelSlot()
        self.watcher = ModelWatcher(settings, self.use_case, self.slot, self.metrics, self.scorer_id)
        self.ops = OpsServer(settings.http_port, self.metrics, self.live, self.ready)
        self.decoder = TopicDecoder(settings, settings.input_topic, self.use_case.input_contract)
        framing = Framing(settings)  # registers the output schemas if needed: a registry problem stops the start
        self.frames = OutputFrames(framing.header(settings.output_topic), framing.header(settings.dlq_topic),
                                   framing.header(settings.shadow_topic))
        self._stop = threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._next_offsets = NextOffsets()  # owned by the scoring thread, as the assignment
        self._last_tick = time.monotonic()
        self._last_lag = 0.0
        self._last_heartbeat_poke = 0.0
        self._last_version: int | None = None
        self._last_shadow: int | None = None
        self._shadow_failures_logged: dict[tuple[int, str], tuple[float, int]] = {}  # -> (logged at, since then)
        self._totals = {"in": 0, "out": 0, "dlq": 0, "batches": 0, "shadow": 0}
        # Owned by the scoring thread (rebalance callbacks run on it too, inside consume()).
        self._sink: Sink | None = None
        self._unsettled: deque[_Batch] = deque()  # sent, not yet delivered (or committed), oldest first
        self._rebalanced = False

    def stop(self) -> None:
        """Ask the loop to finish its current batch, commit and close."""
        self._stop.set()

    def run(self) -> None:
        """Serve until stopped. Raises what stopped it otherwise (watcher failure, fatal Kafka error,
        undelivered outputs), after closing the clients: the orchestrator restarts the process."""
        # Latency over parallelism: batches are small, and a BLAS thread pool spinning on two cores beside
        # librdkafka's threads added tens of ms to a batch's p99. Objects alive after start-up (modules,
        # settings) are frozen out of the garbage collector, so its full collections stay short.
        threadpool_limits(1, user_api="blas")
        gc.freeze()
        self.ops.start()
        self.watcher.start()
        try:
            if self._wait_for_model():
                self._serve()
        finally:
            self.watcher.stop()
            self.watcher.join(30)
            self.ops.stop()
            log.info("scorer %s stopped: %d batches, %d in, %d predictions, %d dead letters, %d shadow predictions",
                     self.scorer_id, self._totals["batches"], self._totals["in"], self._totals["out"],
                     self._totals["dlq"], self._totals["shadow"])

    def _wait_for_model(self) -> bool:
        logged = False
        while not self._stop.is_set():
            self._tick()
            # The history read first (champion and shadow chosen), then a champion live.
            if self.watcher.started.wait(0.2) and self.slot.loaded.wait(0.2):
                return True
            if not logged:
                log.info("no valid model on %s yet: not consuming %s", self.settings.models_topic,
                         self.settings.input_topic)
                logged = True
        return False

    def _serve(self) -> None:
        s = self.settings
        # The sink first: in exactly_once mode init_transactions fences a previous incarnation and settles
        # its open transaction before our consumer reads the committed offsets.
        sink = Sink(s)
        errors = FatalErrors()
        consumer = Consumer(consumer_config(s, self.scorer_id, errors, on_commit=sink.on_commit))
        consumer.subscribe([s.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        log.info("scorer %s (%s) consuming %s on Kafka at %s as group %s (%s), batches of up to %d records / %d ms",
                 self.scorer_id, s.use_case, s.input_topic, s.kafka_identity, s.group_id, s.delivery_mode,
                 s.batch_size, s.batch_max_wait_ms)
        # Batch k is produced, batch k+1 is read and scored, then what has settled since is counted
        # (exactly_once: k's transaction is committed first) and k+1 is sent. Scoring overlaps the network
        # round trips.
        self._sink = sink
        self._unsettled.clear()
        cadence = Cadence(s.batch_max_wait_ms / 1000)
        try:
            while not self._stop.is_set():
                errors.raise_if_fatal()
                self._tick()
                self._rebalanced = False
                msgs = collect(consumer.consume, consumer.poll, s.batch_size, cadence.wait_s(), IDLE_WAIT_S)
                if msgs:
                    cadence.closed()
                    _raise_if_fatal(msgs)  # also when the batch is dropped below: a fenced member must not linger
                if self._rebalanced:
                    self._restart_from_committed(consumer, len(msgs))
                    continue
                batch = self._score(msgs)
                if not self._settle(consumer, after=batch):
                    batch = None  # read after the rewind point: it will be read again
                if batch is not None:
                    self._send(batch, consumer)
                self._update_lag(consumer)
                self._pace_heartbeats(consumer)
            # Stopping: the commit lands before the consumer leaves the group.
            self._settle(consumer, after=None, handover=True)
            leave_group(consumer, self.settings)
        except BaseException:
            # The unsettled batches stay uncommitted and are read again by whoever owns their partitions
            # next: the revocation inside close() must not try to settle them again.
            self._unsettled.clear()
            self._sink = None
            raise
        finally:
            consumer.close()
            sink.close()

    def _pace_heartbeats(self, consumer: Consumer) -> None:
        """Keep heartbeats at ``heartbeat.interval.ms``: librdkafka checks whether one is due only when its main
        thread wakes, about every 500 ms unless the application calls in; a cheap call wakes it. A rebalance is
        learnt from a heartbeat's answer, so this bounds how long a hand-over leaves partitions unread."""
        now = time.monotonic()
        if now - self._last_heartbeat_poke >= self.settings.heartbeat_interval_ms / 2000:
            self._last_heartbeat_poke = now
            consumer.assignment()

    def _restart_from_committed(self, consumer: Consumer, dropped: int) -> None:
        """After a rebalance inside ``collect`` the batch may hold records fetched before a revocation
        (which the consumer will fetch again from the committed offset) beside records fetched after:
        drop it all and resume every assigned partition from its committed offset, which the revocation
        brought up to date (the batches in flight are settled in ``_on_revoke``)."""
        assigned = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        self._next_offsets.forget(self._assigned)
        committed = self._committed(consumer, assigned) if assigned else []
        if committed is None:
            log.info("rebalance during a batch: dropped %d fetched record(s); stopping, so %s not resumed", dropped,
                     _names(assigned))
            return
        for tp in committed:
            if (tp.topic, tp.partition) not in self._assigned:
                continue  # revoked while the offsets were read (callbacks run inside committed()): not ours
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
            except KafkaException as e:  # lost meanwhile, or not fetched yet: a new assignment starts from the commit
                log.warning("cannot seek %s[%d] to its committed offset %d: %s", tp.topic, tp.partition, tp.offset, e)
        log.info("rebalance during a batch: dropped %d fetched record(s), resuming %s from committed offsets",
                 dropped, sorted(self._assigned))

    def _committed(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition] | None:
        """The committed offsets of ``partitions``; None if the scorer is asked to stop before they are read (it then
        seeks nothing and scores nothing more). A replica that died for good inside a transaction leaves its offsets
        unstable until the broker aborts that transaction (after its transaction timeout), and a group coordinator
        that moved or is still loading its offsets answers with an error: ask again, ticking meanwhile. An error on
        one partition is never read as "no committed offset" (that would rescore the partition from its start)."""
        while not self._stop.is_set():
            try:
                offsets = consumer.committed(partitions, timeout=COMMITTED_WAIT_S)
                err = next((tp.error for tp in offsets if tp.error is not None), None)
            except KafkaException as e:
                err = e.args[0]
            if err is None:
                return offsets
            if err.code() not in COMMITTED_RETRIABLE:
                raise KafkaException(err)
            log.warning("committed offsets of %s not readable yet (%s; a dead replica's open transaction holds them "
                        "until the broker aborts it, or the group coordinator is moving): asking again",
                        _names(partitions), err.str())
            self._tick()
        return None

    def _tick(self) -> None:
        self._last_tick = time.monotonic()
        if self.watcher.error is not None:
            raise RuntimeError("model watcher failed") from self.watcher.error

    def _inputs(self, msgs: Sequence[Message]) -> InputBatch:
        """The batch's records column-wise, without those fetched before their partition was revoked
        mid-batch (their new owner reads them again), nor those the consumer delivered a second time."""
        topic = self.settings.input_topic
        assigned = {p for _, p in self._assigned}  # one input topic
        partitions, offsets, keys, values = [], [], [], []
        again: dict[int, list[int]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:  # not a fatal one: _raise_if_fatal has seen the batch
                log.warning("consumer error on %s: %s", topic, err)
                continue
            p = m.partition()
            if p not in assigned:
                continue
            if not self._next_offsets.admit((topic, p), m.offset()):
                again.setdefault(p, []).append(m.offset())
                continue
            partitions.append(p)
            offsets.append(m.offset())
            keys.append(m.key())
            values.append(m.value())
        if again:
            self.metrics.redelivered.inc(sum(map(len, again.values())))
            ranges = (f"{topic}[{p}]@{min(o)}-{max(o)} ({len(o)} records)" for p, o in sorted(again.items()))
            log.warning("the consumer delivered %s again, already scored in this assignment: dropped",
                        ", ".join(ranges))
        return InputBatch(topic, np.array(partitions, np.int32), np.array(offsets, np.int64), keys, values)

    def _score(self, msgs: Sequence[Message]) -> _Batch | None:
        inputs = self._inputs(msgs)
        if not len(inputs):
            return None
        started = time.perf_counter()
        serving = self.slot.serving  # read once: one champion version (and at most one shadow) score the batch
        model, shadow = serving.current, serving.shadow
        scored = score_batch(inputs, model, self.use_case, self.decoder, self.frames, shadow=shadow)
        out = [(self.settings.output_topic, k, v) for k, v in scored.predictions]
        out += [(self.settings.dlq_topic, k, v) for k, v in scored.dead_letters]
        # In the same delivery as the champion's: one transaction in exactly_once, one commit in at_least_once.
        out += [(self.settings.shadow_topic, k, v) for k, v in scored.shadow_predictions]
        first: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        for p in np.unique(inputs.partitions).tolist():
            mine = inputs.offsets[inputs.partitions == p]  # in fetch order, which is offset order
            first[(inputs.topic, p)], last[(inputs.topic, p)] = int(mine[0]), int(mine[-1])
        # The committed offset is the next one to read.
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]
        return _Batch(out, offsets, first, last, len(inputs), len(scored.predictions), scored.dead_letter_classes,
                      model.name, model.version, started, shadow_version=shadow.version if shadow else None,
                      n_shadow=len(scored.shadow_predictions), shadow_failure=scored.shadow_failure)

    def _send(self, batch: _Batch, consumer: Consumer) -> None:
        try:
            batch.in_flight = self._sink.send(batch.out, batch.offsets, consumer)
        except BatchAborted:
            self._rewind(consumer, batch.first, _ranges(batch.first, batch.last))
            return
        self._unsettled.append(batch)

    def _settle(self, consumer: Consumer, after: _Batch | None, *, handover: bool = False) -> bool:
        """Count the batches settled since the last call; False when the open transaction was aborted and
        the input rewound (also past ``after``, the batch read since, which is dropped). ``handover``: the
        partitions are being revoked (or the scorer stops), so every commit must land now."""
        try:
            settled = self._sink.settle(consumer, handover=handover)
        except BatchAborted:
            aborted = self._unsettled.popleft()  # exactly_once: the one open transaction
            rewind = {**(after.first if after else {}), **aborted.first}
            self._rewind(consumer, rewind, _ranges(aborted.first, aborted.last))
            return False
        for _ in settled:
            self._count(self._unsettled.popleft())
        return True

    def _count(self, batch: _Batch) -> None:
        m = self.metrics
        m.events_in.inc(batch.n_in)
        m.predictions_out.inc(batch.n_predictions)
        for cls in batch.dead_letter_classes:
            m.dead_letters.labels(cls).inc()
        elapsed = time.perf_counter() - batch.started
        m.batch_seconds.observe(elapsed)
        self._totals["in"] += batch.n_in
        self._totals["out"] += batch.n_predictions
        self._totals["dlq"] += len(batch.dead_letter_classes)
        self._totals["batches"] += 1
        if batch.model_version != self._last_version:
            log.info("first batch scored by %s v%d: %s", batch.model_name, batch.model_version,
                     _ranges(batch.first, batch.last))
            self._last_version = batch.model_version
        if batch.shadow_version is not None or self._last_shadow is not None:
            self._count_shadow(batch)
        log.debug("batch %s: %d predictions, %d dead letters, model v%d, %.1f ms", _ranges(batch.first, batch.last),
                  batch.n_predictions, len(batch.dead_letter_classes), batch.model_version, elapsed * 1000)

    def _count_shadow(self, batch: _Batch) -> None:
        m = self.metrics
        m.shadow_predictions_out.inc(batch.n_shadow)
        self._totals["shadow"] += batch.n_shadow
        if batch.shadow_version != self._last_shadow:
            log.info("first batch %s: %s", f"scored by shadow v{batch.shadow_version}" if batch.shadow_version
                     else "without a shadow", _ranges(batch.first, batch.last))
            self._last_shadow = batch.shadow_version
        failure = batch.shadow_failure
        if failure is None:
            return
        m.shadow_failures.labels(failure.reason).inc()
        key = (batch.shadow_version, failure.reason)
        logged_at, since = self._shadow_failures_logged.get(key, (-SHADOW_FAILURE_LOG_S, 0))
        now = time.monotonic()
        if now - logged_at < SHADOW_FAILURE_LOG_S:
            self._shadow_failures_logged[key] = (logged_at, since + 1)
            return
        self._shadow_failures_logged[key] = (now, 0)
        log.warning("shadow v%d failed on batch %s (%s): %s; its outputs of that batch skipped, the champion's "
                    "delivered%s", batch.shadow_version, _ranges(batch.first, batch.last), failure.reason,
                    failure.detail, f" ({since} more such batch(es) since the last report)" if since else "")

    def _rewind(self, consumer: Consumer, to: dict[tuple[str, int], int], what: str) -> None:
        self.metrics.aborted.inc()
        self._next_offsets.forget(to)
        for (t, p), o in to.items():
            if (t, p) in self._assigned:
                try:
                    consumer.seek(TopicPartition(t, p, o))
                except KafkaException as e:  # lost meanwhile: its next owner reads from the committed offset
                    log.warning("cannot rewind %s[%d] to %d: %s", t, p, o, e)
        log.warning("transaction of batch %s aborted: rewound to %s to score it again", what, to)

    def _update_lag(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now - self._last_lag < LAG_INTERVAL_S or not self._assigned:
            return
        self._last_lag = now
        for tp in consumer.position([TopicPartition(t, p) for t, p in self._assigned]):
            # Cached: the high watermark of the last fetch response, no request to the broker.
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalanced = True
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self._next_offsets.forget((tp.topic, tp.partition) for tp in partitions)
        log.info("assigned %s", sorted(self._assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Settle the batches in flight while their partitions are still ours: their offsets get committed
        # (or their transaction settled) and the next owner starts right after them, without duplicates.
        if self._sink is not None:
            self._settle(consumer, after=None, handover=True)
        self._rebalanced = True
        self._next_offsets.forget((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def live(self) -> tuple[bool, str]:
        """/healthz: the loop ticks and the model watcher runs."""
        stalled = time.monotonic() - self._last_tick
        if self.watcher.error is not None or not self.watcher.is_alive():
            return False, f"model watcher stopped: {self.watcher.error!r}"
        if stalled > self.settings.liveness_timeout_s:
            return False, f"scoring loop stalled for {stalled:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """/readyz: a model is serving and partitions are assigned."""
        serving = self.slot.serving
        model = serving.current
        if model is None:
            return False, "no model loaded"
        if not self._assigned:
            return False, f"{model.name} v{model.version} loaded, no partitions assigned"
        shadow = f", shadow v{serving.shadow.version}" if serving.shadow else ""
        return True, f"{model.name} v{model.version} serving {len(self._assigned)} partition(s){shadow}"


@dataclass
class _Batch:
    """A scored batch: its output records, the input offsets to commit, and what to count once delivered."""

    out: list[Record]
    offsets: list[TopicPartition]
    first: dict[tuple[str, int], int]
    last: dict[tuple[str, int], int]
    n_in: int
    n_predictions: int
    dead_letter_classes: list[str]
    model_name: str
    model_version: int
    started: float
    in_flight: InFlight | None = None
    shadow_version: int | None = None
    n_shadow: int = 0
    shadow_failure: ShadowFailure | None = None


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def _ranges(first: dict[tuple[str, int], int], last: dict[tuple[str, int], int]) -> str:
    return ", ".join(f"{t}[{p}]@{first[(t, p)]}-{last[(t, p)]}" for t, p in sorted(first))
