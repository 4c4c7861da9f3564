"""Where the scoring loop reads each partition from: a record the consumer delivers a second time within one assignment
is dropped before scoring, counted and logged, while a position set on purpose (assignment, a rewind to the committed
offsets or to an aborted batch) reads again; after a rebalance the committed offsets are asked for until they come,
and an error is never taken for "no committed offset"."""

import logging
import threading
from dataclasses import dataclass

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from scoring_service.app import Scorer
from scoring_service.config import ScorerSettings
from scoring_service.ops import Metrics
from scoring_service.positions import NextOffsets

TOPIC = ScorerSettings(use_case="flight_delay").input_topic


def test_a_record_at_or_below_an_admitted_offset_is_refused_per_partition():
    offsets = NextOffsets()
    assert [offsets.admit((TOPIC, 0), o) for o in (5, 6, 9)] == [True, True, True]  # gaps are fine (markers)
    assert [offsets.admit((TOPIC, 0), o) for o in (9, 6, 0)] == [False, False, False]
    assert offsets.admit((TOPIC, 1), 0)  # another partition has its own position
    assert offsets.admit((TOPIC, 0), 10)
    offsets.forget([(TOPIC, 0), (TOPIC, 7)])  # an unknown partition is no error
    assert offsets.admit((TOPIC, 0), 3)  # sought back on purpose: read again
    assert not offsets.admit((TOPIC, 1), 0)


def _scorer() -> Scorer:
    """A scorer with only the state the position bookkeeping reads (no clients, no model, no registry)."""
    scorer = Scorer.__new__(Scorer)
    scorer.settings = ScorerSettings(use_case="flight_delay")
    scorer.metrics = Metrics()
    scorer._assigned = {(TOPIC, 0), (TOPIC, 1)}
    scorer._next_offsets = NextOffsets()
    scorer._stop = threading.Event()
    scorer._last_tick = 0.0
    scorer.watcher = _Watcher()
    return scorer


def _records(partition: int, offsets) -> list[Message]:
    return [Message(topic=TOPIC, partition=partition, offset=o, key=f"k{o}".encode(), value=b"{}") for o in offsets]


def _redelivered(scorer: Scorer) -> float:
    return scorer.metrics.registry.get_sample_value("scorer_records_redelivered_total")


def test_records_delivered_again_are_dropped_counted_and_logged(caplog):
    scorer = _scorer()
    first = scorer._inputs(_records(0, range(100, 110)) + _records(1, range(0, 5)))
    assert len(first) == 15
    # The fetch position of partition 0 moved back to 104: its records up to 109 come again, then new ones.
    with caplog.at_level(logging.WARNING, logger="scoring_service.app"):
        second = scorer._inputs(_records(0, range(104, 115)) + _records(1, range(5, 8)))
    assert list(zip(second.partitions.tolist(), second.offsets.tolist(), strict=True)) == \
        [(0, o) for o in range(110, 115)] + [(1, o) for o in range(5, 8)]
    assert second.keys == [f"k{o}".encode() for o in [*range(110, 115), *range(5, 8)]]
    assert _redelivered(scorer) == 6
    assert [r.getMessage() for r in caplog.records] == [
        f"the consumer delivered {TOPIC}[0]@104-109 (6 records) again, already scored in this assignment: dropped"]


def test_a_batch_of_nothing_but_records_delivered_again_scores_nothing():
    scorer = _scorer()
    scorer._inputs(_records(0, range(0, 3)))
    assert len(scorer._inputs(_records(0, range(0, 3)))) == 0
    assert _redelivered(scorer) == 3


def test_positions_set_on_purpose_read_again():
    scorer = _scorer()
    scorer._inputs(_records(0, range(0, 10)) + _records(1, range(0, 10)))
    # An aborted batch of partition 0 from offset 4 on is rewound: the consumer is sought there.
    sought = []
    scorer._rewind(_Seeks(sought), {(TOPIC, 0): 4}, f"{TOPIC}[0]@4-9")
    assert [(tp.topic, tp.partition, tp.offset) for tp in sought] == [(TOPIC, 0, 4)]
    again = scorer._inputs(_records(0, range(4, 10)) + _records(1, range(5, 10)))
    assert list(zip(again.partitions.tolist(), again.offsets.tolist(), strict=True)) == [(0, o) for o in range(4, 10)]
    # A new assignment starts wherever the committed offsets say.
    scorer._on_assign(None, [TopicPartition(TOPIC, 1)])
    assert len(scorer._inputs(_records(1, range(0, 3)))) == 3


def test_a_consumer_error_among_the_records_is_logged_and_skipped(caplog):
    scorer = _scorer()
    error = Message(topic=TOPIC, partition=0, offset=-1, error=KafkaError(KafkaError._PARTITION_EOF))
    with caplog.at_level(logging.WARNING, logger="scoring_service.app"):
        batch = scorer._inputs([error, *_records(0, [0])])
    assert batch.offsets.tolist() == [0]
    assert any("consumer error on" in r.getMessage() for r in caplog.records)


class _Watcher:
    error = None


class _Consumer:
    """The calls ``_restart_from_committed`` makes: ``committed`` answers from a script (an exception is raised; a
    callable stands for the stop request arriving meanwhile), ``seek`` is recorded."""

    def __init__(self, answers: list) -> None:
        self.answers, self.sought, self.asked, self.unseekable = answers, [], 0, set()

    def committed(self, partitions, timeout):
        self.asked += 1
        answer = self.answers.pop(0)
        if callable(answer):
            answer = answer()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def seek(self, tp) -> None:
        if tp.partition in self.unseekable:
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.sought.append((tp.partition, tp.offset))


@dataclass
class _Committed:
    """A partition of ``committed()``'s answer (confluent-kafka's TopicPartition takes no error from Python)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


def _at(*offsets, error: KafkaError | None = None) -> list[_Committed]:
    """Partitions 0, 1... at ``offsets``; with ``error``, the last one failed instead."""
    answer = [_Committed(TOPIC, p, o) for p, o in enumerate(offsets)]
    if error is not None:
        answer[-1] = _Committed(TOPIC, len(offsets) - 1, -1001, error)
    return answer


def test_committed_offsets_are_asked_for_again_through_a_moving_coordinator_and_unstable_offsets(caplog):
    scorer = _scorer()
    consumer = _Consumer([KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)),
                          KafkaException(KafkaError(KafkaError._TIMED_OUT)),
                          _at(7, error=KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT)),
                          _at(7, -1001)])
    with caplog.at_level(logging.WARNING, logger="scoring_service.app"):
        scorer._restart_from_committed(consumer, 0)
    assert consumer.asked == 4
    # Partition 1 has no committed offset: it starts from the beginning (the group's auto.offset.reset).
    assert consumer.sought == [(0, 7), (1, OFFSET_BEGINNING)]
    assert sum("not readable yet" in r.getMessage() for r in caplog.records) == 3


def test_an_error_on_one_partition_that_does_not_pass_stops_the_scorer_before_any_seek():
    scorer = _scorer()
    consumer = _Consumer([_at(7, error=KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))])
    with pytest.raises(KafkaException) as raised:
        scorer._restart_from_committed(consumer, 0)
    assert raised.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    assert consumer.sought == []


def test_a_stop_request_while_the_offsets_are_unreadable_ends_the_wait_without_a_seek():
    scorer = _scorer()

    def stop_then_time_out():
        scorer._stop.set()  # SIGTERM arrives during the call
        return KafkaException(KafkaError(KafkaError._TIMED_OUT))

    consumer = _Consumer([stop_then_time_out])
    scorer._restart_from_committed(consumer, 3)
    assert consumer.asked == 1 and consumer.sought == []


def test_a_partition_that_cannot_be_sought_is_logged_and_the_others_resume(caplog):
    scorer = _scorer()
    consumer = _Consumer([_at(7, 9)])
    consumer.unseekable = {0}
    with caplog.at_level(logging.WARNING, logger="scoring_service.app"):
        scorer._restart_from_committed(consumer, 0)
    assert consumer.sought == [(1, 9)]
    assert f"cannot seek {TOPIC}[0] to its committed offset 7" in caplog.text


class _Seeks:
    """The one consumer call ``_rewind`` makes, recorded."""

    def __init__(self, sought: list) -> None:
        self.seek = sought.append
