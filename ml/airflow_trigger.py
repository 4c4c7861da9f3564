"""The Airflow event trigger behind "retrain every N records": a poll of offsets, not a read of records.

Runs in the triggerer as the AssetWatcher of a use case's labels topic. Every ``poll_interval_s`` it asks
``ml.new_records.poll`` whether at least ``min_records`` records arrived since the last snapshot; when they
have, it fires once with the announced offset ranges as the asset event's payload and ends (the triggerer
starts it again). What it announced is recorded beside the snapshot manifests, so a restarted triggerer does
not fire twice for one range.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import Connection
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from ml import new_records, use_cases
from ml.errors import BrokerUnavailable, TopicMissing
from ml.settings import LoopSettings

log = logging.getLogger(__name__)


class NewRecordsTrigger(BaseEventTrigger):
    """Fires when the labels topic of ``use_case`` holds at least ``min_records`` records no snapshot read."""

    def __init__(self, use_case: str, min_records: int, poll_interval_s: float = 5.0,
                 reannounce_after_s: float = 3600.0, kafka_config_id: str | None = "kafka_default") -> None:
        super().__init__()
        self.use_case = use_case
        self.min_records = min_records
        self.poll_interval_s = poll_interval_s
        self.reannounce_after_s = reannounce_after_s
        self.kafka_config_id = kafka_config_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"use_case": self.use_case, "min_records": self.min_records, "poll_interval_s": self.poll_interval_s,
                 "reannounce_after_s": self.reannounce_after_s, "kafka_config_id": self.kafka_config_id})

    def _settings(self) -> LoopSettings:
        """The environment's settings for the use case, with the Kafka connection's client settings if set
        (``kafka_config_id`` None: the environment's alone)."""
        from ml.airflow_tasks import RunRequest, settings_for_run

        extra = None
        if self.kafka_config_id is not None:
            try:
                extra = Connection.get(self.kafka_config_id).extra_dejson
            except AirflowNotFoundException:
                pass
        return settings_for_run(RunRequest(), kafka_extra=extra, use_case=self.use_case)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        settings = await asyncio.to_thread(self._settings)
        topic = settings.topic(use_cases.get(self.use_case).topics.labels)
        log.info("counting new records on %s every %.1f s: retrain at %d", topic, self.poll_interval_s,
                 self.min_records)
        while True:
            try:
                announcement = await asyncio.to_thread(new_records.poll, settings, topic, self.min_records,
                                                       self.reannounce_after_s)
            except (BrokerUnavailable, TopicMissing) as e:  # the next poll tries again
                log.warning("cannot count new records on %s: %s", topic, e)
                announcement = None
            if announcement is not None:
                yield TriggerEvent(announcement.model_dump(mode="json"))
                return
            await asyncio.sleep(self.poll_interval_s)
