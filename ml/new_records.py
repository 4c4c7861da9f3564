"""Is it time to retrain? New records on a use case's labels topic, counted from offsets alone.

The count compares the topic's end offsets with the end offsets of its last snapshot manifest (the loop's own
record of what was trained on): a poll costs two offset lookups whatever the volume. When at least N records
are new (summed over partitions) the range is announced: written to ``announced.json`` beside the manifests,
then handed to the caller (the Airflow trigger makes it an asset event). Until a snapshot covers an announced
range nothing more is announced, so a restarted trigger does not fire twice for one range and an event never
queues a run behind one that will read its records first. A range no snapshot covered within
``reannounce_after_s`` (its run failed before its snapshot) is announced again.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from ml.settings import LoopSettings
from ml.snapshot import list_manifests, partition_offsets, topic_dir

log = logging.getLogger(__name__)

ANNOUNCED = "announced.json"


class Announcement(BaseModel):
    """New records of a topic a run is to train on: per partition ``[start, end)``, start being where the last
    snapshot ended."""

    announcement_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    topic: str
    ranges: dict[int, tuple[int, int]]
    records: int
    min_records: int
    announced_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def covered_by(self, snapshot_ends: dict[int, int]) -> bool:
        """True once snapshots have read every announced record."""
        return all(snapshot_ends.get(p, 0) >= end for p, (_, end) in self.ranges.items())


def new_ranges(snapshot_ends: dict[int, int], offsets: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Per partition with records no snapshot read: ``[start, end)``. ``offsets``: partition -> (earliest, end)
    now; a partition no snapshot has read starts at its earliest offset (older records were deleted)."""
    ranges = {}
    for p, (earliest, end) in sorted(offsets.items()):
        start = max(snapshot_ends.get(p, 0), earliest)
        if end > start:
            ranges[p] = (start, end)
    return ranges


def decide(snapshot_ends: dict[int, int], offsets: dict[int, tuple[int, int]], previous: Announcement | None,
           topic: str, min_records: int, reannounce_after_s: float, now: datetime) -> Announcement | None:
    """The announcement to make now, or None: fewer than ``min_records`` new records, or the previous
    announcement not yet covered by a snapshot (and not yet overdue)."""
    if previous is not None and not previous.covered_by(snapshot_ends):
        if (now - previous.announced_at).total_seconds() < reannounce_after_s:
            return None
        log.warning("records %s of %s announced at %s are still not in a snapshot after %.0f s: announcing again",
                    _fmt(previous.ranges), topic, previous.announced_at.isoformat(), reannounce_after_s)
    ranges = new_ranges(snapshot_ends, offsets)
    records = sum(end - start for start, end in ranges.values())
    if records < min_records:
        return None
    return Announcement(topic=topic, ranges=ranges, records=records, min_records=min_records, announced_at=now)


def last_announcement(settings: LoopSettings, topic: str) -> Announcement | None:
    path = topic_dir(settings, topic) / ANNOUNCED
    return Announcement.model_validate_json(path.read_bytes()) if path.exists() else None


def snapshot_ends(settings: LoopSettings, topic: str) -> dict[int, int]:
    """Where the last snapshot of ``topic`` ended, per partition ({} before the first)."""
    manifests = list_manifests(settings, topic)
    return manifests[-1].end_offsets if manifests else {}


def poll(settings: LoopSettings, topic: str, min_records: int, reannounce_after_s: float) -> Announcement | None:
    """One look at ``topic``: announce (and record) its new records if there are enough. Raises
    BrokerUnavailable or TopicMissing."""
    ends = snapshot_ends(settings, topic)
    announcement = decide(ends, partition_offsets(settings, topic), last_announcement(settings, topic), topic,
                          min_records, reannounce_after_s, datetime.now(UTC))
    if announcement is not None:
        folder = topic_dir(settings, topic)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{ANNOUNCED}.{os.getpid()}"
        tmp.write_bytes(announcement.model_dump_json(indent=2).encode())
        os.replace(tmp, folder / ANNOUNCED)  # recorded before anyone hears of it: a restart cannot repeat it
        log.info("%d new records on %s (%s), at least %d asked: announced %s", announcement.records, topic,
                 _fmt(announcement.ranges), min_records, announcement.announcement_id)
    return announcement


def _fmt(ranges: dict[int, tuple[int, int]]) -> str:
    return ", ".join(f"[{p}]@{start}-{end - 1}" for p, (start, end) in sorted(ranges.items()))
