"""Benchmark: the CPU a snapshot spends per flight in each of its stages, without Kafka.

Encodes ``flights.completed`` records of the given months as the replay does, then measures CPU microseconds per
record (``resource.getrusage``, the best of ``--repeats`` passes over batches of ``--batch`` records) of: the
snapshot's whole decode (``ContractDecoder.decode``: pyarrow's JSON reader, the contract's checks), pyarrow's JSON
reader alone with and without its threads, msgspec's record-by-record decoder alone (no columns built), and
writing the decoded rows as the snapshot writes them (zstd Parquet, one row group per 65,536 rows). Last stdout
line: JSON with ``records``, ``record_bytes`` and ``cpu_us_per_record`` by stage.

    .venv/bin/python benchmarks/snapshot_cpu.py [--months 1-3] [--batch 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.decode import ContractDecoder  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from ml.snapshot_files import ROW_GROUP  # noqa: E402
from use_cases.flight_delay.contracts import FlightCompleted  # noqa: E402
from use_cases.flight_delay.replay import stream_chunks, topics  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402


def completed_values(months: tuple[int, int]) -> list[bytes]:
    """The JSON values (no framing) the replay writes to ``flights.completed`` for ``months``."""
    settings = LoopSettings(use_case="flight_delay")
    _, completed = topics(settings)
    return [value for run in stream_chunks(settings, load_completed(months))
            for topic, value in zip(run.topics, run.values, strict=True) if topic == completed]


def cpu_us(values: list[bytes], batch: int, repeats: int, stage: Callable[[list[bytes]], object]) -> float:
    """CPU microseconds per record of ``stage`` over ``values`` in batches: the best of ``repeats`` passes."""
    best = float("inf")
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        for a in range(0, len(values), batch):
            stage(values[a:a + batch])
        after = resource.getrusage(resource.RUSAGE_SELF)
        best = min(best, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return round(best / len(values) * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", default="1-3", help="first-last month of 2013 (default 1-3)")
    parser.add_argument("--batch", type=int, default=10_000, help="records per decode call (the snapshot's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    first, last = (int(m) for m in args.months.split("-"))
    values = completed_values((first, last))
    decoder = ContractDecoder(FlightCompleted)
    parse = decoder.parse_options  # the reader's explicit schema, as the decoder parses
    record = decoder.record_decoder

    def reader(threads: bool) -> Callable[[list[bytes]], object]:
        options = pj.ReadOptions(use_threads=threads)
        return lambda batch: pj.read_json(io.BytesIO(b"\n".join(batch)), read_options=options,
                                          parse_options=parse)

    table = pa.concat_tables(decoder.decode(values[a:a + args.batch]).table
                             for a in range(0, len(values), args.batch))
    assert table.num_rows == len(values), "every replayed record must decode"

    def write(_batch: list[bytes]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            with pq.ParquetWriter(Path(tmp) / "part.parquet", table.schema, compression="zstd") as writer:
                for a in range(0, table.num_rows, ROW_GROUP):
                    writer.write_table(table.slice(a, ROW_GROUP), row_group_size=ROW_GROUP)

    stages = {
        "decode": cpu_us(values, args.batch, args.repeats, decoder.decode),
        "json_reader_threads": cpu_us(values, args.batch, args.repeats, reader(True)),
        "json_reader_one_thread": cpu_us(values, args.batch, args.repeats, reader(False)),
        "msgspec_records": cpu_us(values, args.batch, args.repeats, lambda batch: [record.decode(v) for v in batch]),
        # One pass writes every row: its CPU per record is the whole write's over the record count.
        "parquet_write": cpu_us(values, len(values), args.repeats, write),
    }
    print(orjson.dumps({"records": len(values), "record_bytes": round(sum(map(len, values)) / len(values)),
                        "batch": args.batch, "cpu_us_per_record": stages}).decode())


if __name__ == "__main__":
    main()
