"""When the retraining trigger announces new records (ml.new_records.decide), and which event started a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from ml.airflow_tasks import announced_by
from ml.new_records import Announcement, decide, new_ranges

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def announce(ends, offsets, previous=None, n=100, now=NOW, reannounce_after_s=3600.0):
    return decide(ends, offsets, previous, "t.flights.completed", n, reannounce_after_s, now)


def test_new_ranges_start_where_the_last_snapshot_ended_or_at_the_earliest_offset_kept():
    offsets = {0: (0, 500), 1: (0, 300), 2: (250, 400)}  # partition 2's first 250 records were deleted
    assert new_ranges({0: 450, 1: 300}, offsets) == {0: (450, 500), 2: (250, 400)}
    assert new_ranges({}, {0: (0, 0)}) == {}


def test_a_backlog_the_snapshots_cover_announces_nothing_and_n_new_records_announce_their_ranges():
    assert announce({0: 100_000, 1: 100_000}, {0: (0, 100_000), 1: (0, 100_000)}) is None
    assert announce({0: 100_000, 1: 100_000}, {0: (0, 100_060), 1: (0, 100_039)}) is None  # 99 < 100
    a = announce({0: 100_000, 1: 100_000}, {0: (0, 100_060), 1: (0, 100_040)})
    assert (a.records, a.ranges, a.topic) == (100, {0: (100_000, 100_060), 1: (100_000, 100_040)},
                                              "t.flights.completed")
    first = announce({}, {0: (0, 70), 1: (0, 30)})  # no snapshot yet: everything kept is new
    assert first.ranges == {0: (0, 70), 1: (0, 30)}


def test_nothing_more_is_announced_until_a_snapshot_covers_the_last_announcement():
    offsets = {0: (0, 200), 1: (0, 200)}
    previous = announce({}, {0: (0, 60), 1: (0, 40)})
    assert announce({}, offsets, previous, now=NOW + timedelta(minutes=5)) is None
    assert announce({0: 60, 1: 39}, offsets, previous) is None  # one record of it still unread
    covered = announce({0: 60, 1: 40}, offsets, previous)
    assert covered.ranges == {0: (60, 200), 1: (40, 200)}
    # A run that failed before its snapshot: the range is announced again once overdue, with what came since.
    overdue = announce({}, offsets, previous, now=NOW + timedelta(hours=1, seconds=1))
    assert overdue.ranges == {0: (0, 200), 1: (0, 200)} and overdue.announcement_id != previous.announcement_id


def test_an_announcement_survives_its_json_round_trip():
    a = announce({}, {0: (0, 60), 3: (10, 50)})
    again = Announcement.model_validate_json(a.model_dump_json())
    assert again == a and again.covered_by({0: 60, 3: 50}) and not again.covered_by({0: 60})
    assert Announcement.model_validate(a.model_dump(mode="json")) == a  # the asset event's payload


def test_the_run_records_the_newest_announcement_among_its_triggering_events():
    a, b = (announce({}, {0: (0, n)}).model_dump(mode="json") for n in (100, 200))
    events = [SimpleNamespace(extra={"from_trigger": True, "payload": a}), SimpleNamespace(extra={}),
              SimpleNamespace(extra={"from_trigger": True, "payload": b})]
    assert announced_by(events) == b
    assert announced_by([]) is None  # a scheduled or manual run
    assert announced_by([SimpleNamespace(extra={"payload": "not an announcement"})]) is None
