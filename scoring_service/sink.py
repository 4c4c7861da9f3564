"""Delivery of the scored batches' outputs together with their input offsets, in the configured mode.

* ``at_least_once``: batches are produced back to back, without waiting for the broker's acknowledgements
  (a slow acknowledgement does not pause scoring). Delivery reports are collected as they come; the input
  offsets of the batches whose every record is acknowledged, in order, are committed every
  ``commit_interval_ms``, asynchronously (the scoring loop never waits on the group coordinator, which may
  be away during a broker restart). A commit the coordinator did not confirm (refused, or its answer lost while
  the coordinator moved) is sent again after ``RECOMMIT_S``, so the last offsets of a stream that has stopped
  land too. On a hand-over (revocation or stop) everything is flushed and committed synchronously. A failed
  record stops the scorer with its batch uncommitted; a crash before a commit lands re-scores what followed the
  last commit: duplicates, never loss.
* ``exactly_once``: one transaction per batch holds the predictions, the dead letters and the input offsets
  (``send_offsets_to_transaction`` with the consumer's group metadata); readers with
  ``isolation.level=read_committed`` see each batch's outputs once or not at all. A batch's transaction is
  committed before the next one begins.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ml.errors import DeliveryFailed
from scoring_service.config import ScorerSettings
from scoring_service.deadline import CallStuck, call_with_deadline

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes]  # topic, key, value
# Each waits up to the delivery timeout: together far longer than a new coordinator takes to be elected.
ABORT_ATTEMPTS = 5
# at_least_once: an asynchronous commit not confirmed within this long is sent again.
RECOMMIT_S = 5.0
# librdkafka may not honour send_offsets_to_transaction's timeout while it cannot find or reach the group
# coordinator, and block for good (confluentinc/librdkafka#5456, #5511: seen here when the coordinator's broker is
# killed mid-stream). Past its timeout and this grace the call is deemed stuck and the replica stops.
SEND_OFFSETS_GRACE_S = 15.0


class BatchAborted(RuntimeError):
    """The batch's transaction was aborted: nothing of it is visible, its input must be read again."""


def producer_config(settings: ScorerSettings) -> dict:
    config = settings.kafka_config({
        "acks": "all",
        # A batch's records are handed over in one burst, so they fill record batches without waiting;
        # every millisecond of lingering is a millisecond of latency on a live stream.
        "linger.ms": 1,
        "delivery.timeout.ms": int(settings.delivery_timeout_s * 1000),
    })
    if settings.delivery_mode == "exactly_once":
        # Stable per replica: a restarted replica with the same id fences its previous incarnation's
        # transaction (aborting what it left open) before writing. Transactions imply idempotence.
        config["transactional.id"] = settings.producer_transactional_id
        # A replica that dies for good leaves its open transaction to the broker, which aborts it after this
        # long; until then read_committed readers of the outputs it touched see nothing past it. librdkafka's
        # default is 60 s; a batch's transaction lasts no longer than its delivery timeout, the floor allowed.
        config["transaction.timeout.ms"] = int(settings.delivery_timeout_s * 1000)
    # at_least_once is not idempotent: librdkafka's idempotent producer sends a partition's next request only
    # once its previous one is answered, and a record queued behind it makes the broker thread poll without
    # sleeping until the answer comes; on a small machine such spinning clients take the CPU from a broker that
    # is slow for a moment, which slows it further (docs/performance.md). A request retried after a lost answer
    # may duplicate (or reorder) its records, which at-least-once allows. exactly_once commits a batch's transaction
    # before it produces the next batch, so nothing waits behind an unanswered request there.
    return config


@dataclass(eq=False)
class InFlight:
    """A batch whose records are produced but not yet settled, and the input offsets it will commit."""

    offsets: list[TopicPartition]
    records: int
    unacknowledged: int = 0
    errors: list[KafkaError] = field(default_factory=list)

    def on_delivery(self, err: KafkaError | None, _msg) -> None:
        self.unacknowledged -= 1
        if err is not None:
            self.errors.append(err)


class Sink:
    """Produces batches and commits their input offsets once they are durable (per the delivery mode).

    ``send`` hands a batch to the producer and returns at once; ``settle`` reports which batches sent so far
    are settled (delivered, or their transaction committed), in the order they were sent. The loop scores
    the next batch in between, so network round trips overlap with scoring.
    """

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self.transactional = settings.delivery_mode == "exactly_once"
        self.producer = Producer(producer_config(settings))
        self._unsettled: deque[InFlight] = deque()
        self._to_commit: dict[tuple[str, int], int] = {}
        self._unconfirmed: dict[tuple[str, int], int] = {}  # sent in an asynchronous commit, not confirmed yet
        self._committed_at = time.monotonic()
        # exactly_once: True while no transaction is open or in doubt, the last transactional call having returned
        # (init, commit, abort). Only then does ``close`` release the producer (it would abort an open one).
        self._between_transactions = False
        if self.transactional:
            self.producer.init_transactions(settings.delivery_timeout_s)
            self._between_transactions = True

    def send(self, records: Sequence[Record], offsets: list[TopicPartition], consumer: Consumer) -> InFlight:
        """Produce ``records`` (in a new transaction that also holds ``offsets``, in exactly_once mode, which
        requires the previous batch settled). Raises BatchAborted when the transaction had to be aborted,
        KafkaException on fatal errors, CallStuck when librdkafka did not return (the replica must stop)."""
        batch = InFlight(offsets, len(records), unacknowledged=len(records))
        if not self.transactional:
            self._produce(records, batch.on_delivery)
            self._unsettled.append(batch)
            return batch
        self._between_transactions = False  # from here until a commit or an abort returns
        try:
            self.producer.begin_transaction()
            self._produce(records)
            self._send_offsets(offsets, consumer)
        except KafkaException as e:
            self._abort(e, batch)
        self._unsettled.append(batch)
        return batch

    def _send_offsets(self, offsets: list[TopicPartition], consumer: Consumer) -> None:
        """Add ``offsets`` to the open transaction. A call stuck inside librdkafka keeps the transaction busy
        (nothing can abort it), so CallStuck stops the replica: restarted under the same transactional id, it
        fences this transaction and reads those offsets again."""
        timeout, metadata = self.settings.delivery_timeout_s, consumer.consumer_group_metadata()
        try:
            call_with_deadline(lambda: self.producer.send_offsets_to_transaction(offsets, metadata, timeout),
                               timeout + SEND_OFFSETS_GRACE_S, "send_offsets_to_transaction")
        except CallStuck as e:
            log.error("%s adding offsets %s to the transaction (librdkafka can block past its timeout while the group "
                      "coordinator is unreachable, librdkafka#5456): stopping; restarted, the replica fences the open "
                      "transaction and reads the batch again", e,
                      [(tp.topic, tp.partition, tp.offset) for tp in offsets])
            raise

    def settle(self, consumer: Consumer, *, handover: bool = False) -> list[InFlight]:
        """The batches settled since the last call, oldest first.

        exactly_once: commits the open transaction. at_least_once: collects delivery reports without
        waiting, and commits (asynchronously) the offsets of the delivered batches when the commit interval
        has passed; ``handover`` (partitions revoked, or stopping) waits for every batch and commits
        synchronously, so the next owner reads the committed offsets after them.

        Raises DeliveryFailed when a record is not acknowledged (its batch and the later ones stay
        uncommitted), BatchAborted when the transaction was aborted (exactly_once; its input must be read
        again), KafkaException on fatal errors.
        """
        if self.transactional:
            return self._commit_transaction() if self._unsettled else []
        if handover:
            self.producer.flush(self.settings.delivery_timeout_s)
        else:
            self.producer.poll(0)
        failed = [b for b in self._unsettled if b.errors]
        if failed or (handover and any(b.unacknowledged for b in self._unsettled)):
            errors = [e for b in failed for e in b.errors]
            raise DeliveryFailed(f"{len(errors)} record(s) failed ({errors[:3]}), "
                                 f"{sum(b.unacknowledged for b in self._unsettled)} unacknowledged: input "
                                 f"offsets from {self._unsettled[0].offsets} on not committed")
        settled = []
        while self._unsettled and self._unsettled[0].unacknowledged == 0:
            batch = self._unsettled.popleft()
            settled.append(batch)
            self._to_commit.update({(tp.topic, tp.partition): tp.offset for tp in batch.offsets})
        since = time.monotonic() - self._committed_at
        if self._unconfirmed and (handover or since >= RECOMMIT_S):
            if not handover:
                log.warning("offsets %s not confirmed by the group coordinator in %.0f s: committing them again",
                            sorted(self._unconfirmed.items()), since)
            for key, offset in self._unconfirmed.items():
                self._to_commit.setdefault(key, offset)  # unless a newer offset of that partition is due
        if self._to_commit and (handover or since >= self.settings.commit_interval_ms / 1000):
            self._commit(consumer, synchronous=handover)
        return settled

    def _commit(self, consumer: Consumer, *, synchronous: bool) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(self._to_commit.items())]
        if not synchronous:
            self._unconfirmed.update(self._to_commit)
        self._to_commit.clear()
        self._committed_at = time.monotonic()
        try:
            consumer.commit(offsets=offsets, asynchronous=not synchronous)
        except KafkaException as e:
            # Partitions revoked while delivering: the new owner re-reads from the last commit. The outputs
            # are delivered, so this costs duplicates, which at-least-once allows.
            log.warning("commit of %s failed after delivery (%s): those records may be scored again", offsets, e)
        if synchronous:
            self._unconfirmed.clear()  # landed, or given up on a hand-over: the next owner starts from the broker's

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_commit``: a commit's outcome. Confirmed offsets need no resending; a failure (of the
        request, or of a partition) is logged and the offsets stay due again (``RECOMMIT_S``)."""
        # librdkafka sets ``err`` to a partition's error too: partitions with errors of their own failed, the
        # others landed; without any, ``err`` is the whole request's.
        failed = [tp for tp in partitions if tp.error is not None] or (list(partitions) if err is not None else [])
        if failed:
            log.warning("offset commit of %s failed (%s): committed again shortly; a crash meanwhile re-scores "
                        "those records", [(tp.topic, tp.partition, tp.offset) for tp in failed],
                        failed[0].error or err)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if tp not in failed and self._unconfirmed.get(key, -1) <= tp.offset:
                self._unconfirmed.pop(key, None)

    def _abort(self, exc: KafkaException, batch: InFlight) -> None:
        err: KafkaError = exc.args[0]
        if err.fatal() or not (err.txn_requires_abort() or err.retriable()):
            # Fenced by a newer instance, or an unrecoverable producer: this process must stop.
            raise exc
        # A retriable error (the transaction coordinator's broker gone, a timeout) aborts the batch too: its input
        # is read again from the committed offsets, which is simpler than resuming each kind of call.
        log.warning("transaction of %d record(s) for offsets %s aborted: %s", batch.records, batch.offsets, err)
        self._unsettled.clear()
        self._abort_transaction()
        raise BatchAborted(str(err)) from exc

    def _abort_transaction(self, attempts: int = ABORT_ATTEMPTS) -> None:
        """Abort the open transaction. While its coordinator moves to another broker the call times out with a
        retriable error and the abort stays in progress: calling again resumes it (librdkafka's contract)."""
        for attempt in range(1, attempts + 1):
            try:
                self.producer.abort_transaction(self.settings.delivery_timeout_s)
                self._between_transactions = True
                return
            except KafkaException as e:
                if not e.args[0].retriable() or attempt == attempts:
                    raise
                log.warning("abort_transaction attempt %d failed (%s): retrying", attempt, e.args[0])

    def _produce(self, records: Sequence[Record], on_delivery=None) -> None:
        for topic, key, value in records:
            while True:
                try:
                    self.producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: serve delivery reports to make room
                    self.producer.poll(0.05)
        self.producer.poll(0)

    def _commit_transaction(self, attempts: int = 3) -> list[InFlight]:
        for attempt in range(1, attempts + 1):
            try:
                self.producer.commit_transaction(self.settings.delivery_timeout_s)
                self._between_transactions = True
                break
            except KafkaException as e:
                if not e.args[0].retriable() or attempt == attempts:
                    self._abort(e, self._unsettled[0])
                # A retriable error (e.g. a timeout) leaves the outcome open: committing again settles it.
                log.warning("commit_transaction attempt %d failed (%s): retrying", attempt, e.args[0])
        return [self._unsettled.popleft()]

    def close(self) -> None:
        """Deliver what is queued (within the delivery timeout; a record that fails is reported to its batch), then
        release the producer: its threads and connections end now, not whenever the object is collected, so a
        stopped scorer leaves no client retrying a broker. An exactly_once producer is released only between
        transactions: librdkafka's close aborts an open transaction with no time limit (and a call stuck inside
        librdkafka may still hold it), so a transaction a failed batch left open stays the broker's to abort
        (``transaction.timeout.ms``), and that producer is left to be collected."""
        if self.transactional and not self._between_transactions:
            return
        self.producer.flush(self.settings.delivery_timeout_s)
        self.producer.close()
