"""Delivery of a batch's outputs together with its input offsets, in the configured mode.

* ``at_least_once``: produce, ``flush``, check every delivery report, and only then commit the input
  offsets. The commit is asynchronous (the scoring loop never waits on the group coordinator, which may be
  away during a broker restart) except when partitions are handed over on a revocation; a crash before a
  commit lands re-scores the batch: duplicates, never loss.
* ``exactly_once``: one transaction per batch holds the predictions, the dead letters and the input offsets
  (``send_offsets_to_transaction`` with the consumer's group metadata); readers with
  ``isolation.level=read_committed`` see each batch's outputs once or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ml.errors import DeliveryFailed
from scoring_service.config import ScorerSettings

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes]  # topic, key, value


class BatchAborted(RuntimeError):
    """The batch's transaction was aborted: nothing of it is visible, its input must be read again."""


def producer_config(settings: ScorerSettings) -> dict:
    config = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        # Idempotence (acks=all, no duplicates from librdkafka's own retries, order kept per partition).
        "enable.idempotence": True,
        # A batch's records are handed over in one burst, so they fill record batches without waiting;
        # every millisecond of lingering is a millisecond of latency on a live stream.
        "linger.ms": 1,
        "delivery.timeout.ms": int(settings.delivery_timeout_s * 1000),
    }
    if settings.delivery_mode == "exactly_once":
        # Stable per replica: a restarted replica with the same id fences its previous incarnation's
        # transaction (aborting what it left open) before writing.
        config["transactional.id"] = settings.transactional_id
    return config


@dataclass
class InFlight:
    """A batch whose records are produced but not yet confirmed, and the input offsets it will commit."""

    offsets: list[TopicPartition]
    records: int
    errors: list[KafkaError] = field(default_factory=list)


class Sink:
    """Produces a batch's records and commits its input offsets atomically (per the delivery mode).

    ``send`` hands a batch to the producer and returns at once; ``confirm`` waits for it and commits. The
    loop scores the next batch in between, so the network round trips overlap with scoring. Only one batch
    is in flight at a time: ``confirm`` the previous batch before sending the next.
    """

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self.transactional = settings.delivery_mode == "exactly_once"
        self.producer = Producer(producer_config(settings))
        if self.transactional:
            self.producer.init_transactions(settings.delivery_timeout_s)

    def send(self, records: Sequence[Record], offsets: list[TopicPartition], consumer: Consumer) -> InFlight:
        """Produce ``records`` (in a new transaction that also holds ``offsets``, in exactly_once mode).

        Raises BatchAborted when the transaction had to be aborted, KafkaException on fatal errors.
        """
        batch = InFlight(offsets, len(records))
        if not self.transactional:
            self._produce(records, lambda err, _msg: err is not None and batch.errors.append(err))
            return batch
        try:
            self.producer.begin_transaction()
            self._produce(records)
            self.producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(),
                                                      self.settings.delivery_timeout_s)
        except KafkaException as e:
            self._abort(e, batch)
        return batch

    def confirm(self, batch: InFlight, consumer: Consumer, *, sync_commit: bool = False) -> None:
        """Wait until ``batch`` is durable, then commit its offsets (in at_least_once mode asynchronously
        unless ``sync_commit``; failures of an asynchronous commit are logged by the consumer's on_commit).

        Raises DeliveryFailed when a record is not acknowledged (at_least_once: nothing committed),
        BatchAborted when the transaction was aborted (exactly_once), KafkaException on fatal errors.
        """
        if self.transactional:
            try:
                self._commit_transaction()
            except KafkaException as e:
                self._abort(e, batch)
            return
        remaining = self.producer.flush(self.settings.delivery_timeout_s)
        if remaining or batch.errors:
            raise DeliveryFailed(f"{len(batch.errors)} record(s) failed ({batch.errors[:3]}), {remaining} "
                                 f"unacknowledged after {self.settings.delivery_timeout_s} s: input offsets "
                                 f"{batch.offsets} not committed")
        if batch.offsets:
            try:
                consumer.commit(offsets=batch.offsets, asynchronous=not sync_commit)
            except KafkaException as e:
                # Partitions revoked while delivering: the new owner re-reads from the last commit. The
                # outputs are delivered, so this costs duplicates, which at-least-once allows.
                log.warning("commit of %s failed after delivery (%s): the batch may be scored again",
                            batch.offsets, e)

    def _abort(self, exc: KafkaException, batch: InFlight) -> None:
        err: KafkaError = exc.args[0]
        if err.fatal() or not err.txn_requires_abort():
            # Fenced by a newer instance, or an unrecoverable producer: this process must stop.
            raise exc
        log.warning("transaction of %d record(s) for offsets %s aborted: %s", batch.records, batch.offsets, err)
        self.producer.abort_transaction(self.settings.delivery_timeout_s)
        raise BatchAborted(str(err)) from exc

    def _produce(self, records: Sequence[Record], on_delivery=None) -> None:
        for topic, key, value in records:
            while True:
                try:
                    self.producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: serve delivery reports to make room
                    self.producer.poll(0.05)
        self.producer.poll(0)

    def _commit_transaction(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            try:
                self.producer.commit_transaction(self.settings.delivery_timeout_s)
                return
            except KafkaException as e:
                # A retriable error (e.g. a timeout) leaves the outcome open: committing again settles it.
                if not e.args[0].retriable() or attempt == attempts:
                    raise
                log.warning("commit_transaction attempt %d failed (%s): retrying", attempt, e.args[0])

    def close(self) -> None:
        if not self.transactional:
            self.producer.flush(self.settings.delivery_timeout_s)
