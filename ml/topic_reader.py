"""A whole topic as a data frame: every committed record up to the end offsets of one moment, decoded with its
contract (through its frame's schema id), with each record's Kafka timestamp, partition and offset (reports and
live metrics read topics so)."""

from __future__ import annotations

import logging

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel

from ml.kafka_ranges import read_ranges, snapshot_consumer
from ml.settings import LoopSettings
from ml.snapshot import partition_offsets
from ml.wire import TopicDecoder

log = logging.getLogger(__name__)

KAFKA_TS = "kafka_ts_ms"  # columns added by read_topic
PARTITION = "kafka_partition"
OFFSET = "kafka_offset"


def read_topic(settings: LoopSettings, topic: str, contract: type[BaseModel], timeout: float = 30.0
               ) -> pd.DataFrame:
    """Every record of ``topic`` up to its end offsets now (read_committed), decoded with ``contract``, plus
    the Kafka timestamp (ms), partition and offset of each. Records the contract refuses are logged and
    left out. Raises BrokerUnavailable or TopicMissing."""
    ranges = partition_offsets(settings, topic, timeout)
    decoder = TopicDecoder(settings, topic, contract)
    tables, refused = [], 0
    consumer = snapshot_consumer(settings)
    try:
        for batch in read_ranges(consumer, topic, ranges, timeout):
            decoded = decoder.decode(batch.values)
            refused += len(decoded.rejected)
            msgs = [batch.messages[i] for i in decoded.accepted]
            tables.append(decoded.table
                          .append_column(KAFKA_TS, pa.array([m.timestamp()[1] for m in msgs], pa.int64()))
                          .append_column(PARTITION, pa.array([m.partition() for m in msgs], pa.int32()))
                          .append_column(OFFSET, pa.array([m.offset() for m in msgs], pa.int64())))
    finally:
        consumer.close()
    if refused:
        log.warning("%s: %d records refused by the %s contract were left out", topic, refused, contract.__name__)
    if not tables:
        return contract_frame(decoder)
    frame = pa.concat_tables(tables).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    log.info("read %d records of %s (offsets %s)", len(frame), topic,
             {p: f"[{lo},{hi})" for p, (lo, hi) in sorted(ranges.items())})
    return frame


def contract_frame(decoder: TopicDecoder) -> pd.DataFrame:
    """An empty frame with the contract's columns and the Kafka position columns."""
    schema = decoder.schema.append(pa.field(KAFKA_TS, pa.int64())).append(pa.field(PARTITION, pa.int32())) \
        .append(pa.field(OFFSET, pa.int64()))
    return schema.empty_table().to_pandas()

