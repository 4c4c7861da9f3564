"""Reading snapshots: a manifest written before the parallel snapshot (format 1, one data file) is still read, a
newer format is refused with a clear message, pieces follow from the offsets alone, and the gate's holdout and the
training rows are each read alone, with the rows of a split of the whole snapshot (as Arrow, memory-mapped by
default)."""

from __future__ import annotations

import gc
import hashlib
from concurrent.futures import Future

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from ml import pipeline, use_cases
from ml.contracts import arrow_schema
from ml.settings import LoopSettings
from ml.snapshot import (DATA, MANIFEST, SnapshotManifest, SnapshotRows, list_manifests, load_snapshots,
                         manifests_of, topic_dir)
from ml.decode import Decoded
from ml.snapshot_files import (
    ROW_GROUP,
    Piece,
    Schedule,
    _no_cycle_collection,
    _PieceFile,
    _system_memory_pool,
    pieces,
)
from use_cases.flight_delay.contracts import FlightCompleted
from use_cases.flight_delay.source import load_completed

TOPIC = "flights.completed"

FORMAT_1 = {  # as the code before format 2 wrote it: no format_version, no files
    "snapshot_id": "old", "sequence": 1, "topic": TOPIC, "contract": "FlightCompleted", "schema_version": 1,
    "partitions": [{"partition": 0, "start": 0, "end": 20}], "row_count": 20, "rejected_count": 0,
    "rejected_by_class": {}, "content_hash": "0" * 64, "event_time_column": "arr_utc", "event_time_min": None,
    "event_time_max": None, "created_at": "2026-12-01T00:00:00Z", "read_seconds": 0.1, "data_file": DATA,
    "rejected_file": None, "triggered_by": None, "schema_ids": {},
}


def _format_1(settings: LoopSettings, rows: pd.DataFrame, row_group: int = 8192) -> None:
    folder = topic_dir(settings, TOPIC) / "old"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(rows, schema=arrow_schema(FlightCompleted), preserve_index=False),
                   folder / DATA, row_group_size=row_group)
    (folder / MANIFEST).write_bytes(orjson.dumps({**FORMAT_1, "row_count": len(rows)}))


def test_a_format_1_snapshot_is_read_from_its_one_data_file(tmp_path):
    settings = LoopSettings(use_case="flight_delay", loop_data_dir=tmp_path)
    rows = load_completed((1, 1), limit=20)[list(FlightCompleted.model_fields)]
    _format_1(settings, rows)
    (manifest,) = list_manifests(settings, TOPIC)
    assert manifest.format_version == 1 and manifest.file_names == [DATA] and manifest.files == []
    df, _ = load_snapshots(settings, TOPIC, FlightCompleted, ["old"])
    assert df["flight_id"].tolist() == rows["flight_id"].tolist()


def test_a_manifest_of_a_newer_format_is_refused_with_what_to_do():
    with pytest.raises(ValidationError, match="format 3 is newer than this code reads .2.: upgrade"):
        SnapshotManifest.model_validate({**FORMAT_1, "format_version": 3})


def test_pieces_follow_from_the_offsets_alone():
    assert pieces({1: (5, 5), 0: (10, 25)}, size=10) == [Piece(0, 10, 20), Piece(0, 20, 25)]
    assert pieces({0: (0, 3), 2: (7, 9)}, size=10) == [Piece(0, 0, 3), Piece(2, 7, 9)]
    assert Piece(2, 7, 9).file == "part-00002-00000000000000000007.parquet"


def _runs(taken: list[Piece], todo: list[Piece]) -> int:
    """How many runs of consecutive pieces (in ``todo`` order) ``taken`` is made of."""
    at = [todo.index(p) for p in taken]
    return 1 + sum(b != a + 1 for a, b in zip(at, at[1:], strict=False))


def test_one_reader_takes_every_piece_in_order():
    todo = pieces({0: (0, 50), 1: (0, 30)}, size=10)
    schedule = Schedule(todo, 1)
    assert [schedule.take(0) for _ in todo] == todo and schedule.take(0) is None


@pytest.mark.parametrize("pace", [(1, 1), (1, 2), (3, 1), (1, 5)])
def test_readers_take_runs_of_consecutive_pieces_and_every_piece_once(pace):
    todo = pieces({0: (0, 160), 1: (0, 100), 2: (0, 60)}, size=10)  # 32 pieces
    schedule = Schedule(todo, 2)
    taken: dict[int, list[Piece]] = {0: [], 1: []}
    more = True
    while more:  # reader r takes pace[r] pieces a turn: one reads faster than the other
        more = False
        for r in (0, 1):
            for _ in range(pace[r]):
                if (piece := schedule.take(r)) is not None:
                    taken[r].append(piece)
                    more = True
    assert taken[0][0] == todo[0] and taken[1][0] == todo[16]  # each from its share's start
    assert sorted(taken[0] + taken[1]) == todo  # every piece once
    # Each reader reads its share in order, then steals halves of what is left: a few runs, not a piece at a time.
    assert _runs(taken[0], todo) <= 4 and _runs(taken[1], todo) <= 4, taken
    assert abs(len(taken[0]) / pace[0] - len(taken[1]) / pace[1]) <= 2  # they finish together


def test_a_thief_takes_the_second_half_of_the_longest_run_left():
    todo = pieces({0: (0, 100)}, size=10)
    schedule = Schedule(todo, 2)
    assert [schedule.take(0) for _ in range(2)] == todo[:2]  # reader 0 from 0; reader 1's share (5-9) untouched
    assert [schedule.take(1) for _ in range(5)] == todo[5:]
    assert schedule.take(1) == todo[3]  # free: 2-4, its middle
    assert schedule.take(0) == todo[2] and schedule.take(0) == todo[4]  # 3 taken: reader 0 steals 4
    assert schedule.take(0) is None and schedule.take(1) is None


def test_a_piece_given_back_is_taken_again():
    todo = pieces({0: (0, 40)}, size=10)
    schedule = Schedule(todo, 2)
    everything = [p for r in (0, 1, 0, 1) if (p := schedule.take(r))]
    assert sorted(everything) == todo and schedule.take(0) is None
    schedule.give_back(todo[1])
    assert schedule.take(1) == todo[1] and schedule.take(0) is None


def _piece_file(folder, table: pa.Table, sizes: list[int]) -> str:
    """The sha256 of a piece's file written from ``table`` in batches of ``sizes`` (cycled)."""
    folder.mkdir()
    out = _PieceFile(Piece(0, 0, table.num_rows), folder, table.schema, "arr_utc")
    at, i = 0, 0
    while at < table.num_rows:
        part = table.slice(at, sizes[i % len(sizes)])
        decoding: Future = Future()
        decoding.set_result(Decoded(part, np.arange(part.num_rows), [], {1: part.num_rows}))
        out.write(None, decoding)
        at, i = at + part.num_rows, i + 1
    result = out.finish()
    assert result.rows == table.num_rows and result.schema_ids == {1: table.num_rows}
    assert result.sha256 == hashlib.sha256((folder / result.piece.file).read_bytes()).hexdigest()
    return result.sha256


@pytest.mark.parametrize("rows", [ROW_GROUP, ROW_GROUP + 5_000])
def test_a_piece_file_does_not_depend_on_the_batches_its_rows_came_in(tmp_path, rows):
    # A piece that goes on from the last one starts with its leftovers: other batches, the same rows and file.
    # Rows enough for a row group of several Parquet pages, where chunk ends used to cut pages; a piece of exactly
    # one row group has it written by finish, the larger one its first row group by a write.
    flights = load_completed((1, 3), limit=rows)
    table = pa.Table.from_pandas(flights, schema=arrow_schema(FlightCompleted), preserve_index=False)
    assert len({_piece_file(tmp_path / name, table, sizes)
                for name, sizes in (("even", [10_000]), ("leftover", [4_464, 10_000]), ("odd", [777, 9_999]))}) == 1


def test_the_holdout_is_read_alone_with_the_rows_of_a_split_of_the_whole_snapshot(tmp_path):
    settings = LoopSettings(use_case="flight_delay", loop_data_dir=tmp_path, holdout_days=5)
    rows = load_completed((1, 2))[list(FlightCompleted.model_fields)]
    _format_1(settings, rows)
    uc = use_cases.selected(settings)
    whole, _ = load_snapshots(settings, TOPIC, FlightCompleted, ["old"])
    expected = pipeline.split(settings, uc, whole)[1]
    holdout = pipeline.holdout_rows(settings, uc, ["old"])
    assert len(holdout) > 1000 and len(holdout) < len(whole) / 5
    pd.testing.assert_frame_equal(holdout.reset_index(drop=True), expected.reset_index(drop=True))


def test_the_training_rows_are_read_alone_and_are_the_first_part_of_a_split_of_the_whole_snapshot(tmp_path):
    settings = LoopSettings(use_case="flight_delay", loop_data_dir=tmp_path, holdout_days=5)
    rows = load_completed((1, 2))[list(FlightCompleted.model_fields)].sample(frac=1.0, random_state=3)
    _format_1(settings, rows)
    uc = use_cases.selected(settings)
    whole, _ = load_snapshots(settings, TOPIC, FlightCompleted, ["old"])
    expected, holdout = pipeline.split(settings, uc, whole)
    expected = expected.reset_index(drop=True)
    earlier, held_out, manifests = pipeline.earlier_rows(settings, uc, ["old"])
    assert held_out == len(holdout) > 1000 and [m.snapshot_id for m in manifests] == ["old"]
    assert earlier.count == len(expected)
    # Read in the snapshot's order, whichever way; the same rows once ordered as split orders them.
    order = list(uc.time_order)
    frame = earlier.columns(None)
    pd.testing.assert_frame_equal(frame.sort_values(order, kind="stable", ignore_index=True), expected)
    batches = pd.concat(list(earlier.batches(5000)), ignore_index=True)
    pd.testing.assert_frame_equal(batches, frame)
    # Some columns only, the filter reading another (the departure time).
    few = ["carrier", "temp", "delayed"]
    pd.testing.assert_frame_equal(pd.concat(list(earlier.batches(5000, few)), ignore_index=True), frame[few])
    names = ["flight_id", "sched_dep_utc", "carrier", "temp", "delayed"]
    names = [*names, "month"]
    allocated = pa.total_allocated_bytes()
    table = earlier.table(names, types={"carrier": pa.dictionary(pa.int32(), pa.string()), "month": pa.int8()})
    held = pa.total_allocated_bytes() - allocated
    assert pa.types.is_dictionary(table.schema.field("carrier").type) and table.schema.field("month").type == pa.int8()
    assert all(table.column(name).num_chunks == 1 for name in names)
    as_read = table.to_pandas().assign(carrier=lambda t: t["carrier"].astype(str))
    pd.testing.assert_frame_equal(as_read, frame[names].assign(carrier=lambda t: t["carrier"].astype(str)),
                                  check_dtype=False)
    # Scanned: the same rows and types, a Parquet row group (the filter applied) at a time, nothing written.
    scanned = list(earlier.scan(names, types={"carrier": pa.dictionary(pa.int32(), pa.string()), "month": pa.int8()}))
    assert len(scanned) > 1 and all(part.schema == table.schema for part in scanned)
    pd.testing.assert_frame_equal(
        pa.concat_tables(scanned).to_pandas().assign(carrier=lambda t: t["carrier"].astype(str)),
        as_read)
    # Memory-mapped (the default): the same table, its buffers outside Arrow's pool, no file left behind.
    allocated = pa.total_allocated_bytes()
    in_memory = earlier.table(names, types={"carrier": pa.dictionary(pa.int32(), pa.string()),
                                            "month": pa.int8()}, mapped=False)
    assert pa.total_allocated_bytes() - allocated > in_memory.nbytes / 2 > 500_000 and table.equals(in_memory)
    # (Other threads of a long test session may allocate meanwhile: the pool is only a coarse witness; the maps
    # below are the exact one.)
    assert held < in_memory.nbytes / 4 and not any(earlier.scratch_dir.iterdir())
    assert all(not buffer or _mapped(buffer) for column in table.columns for buffer in column.chunk(0).buffers())
    with pytest.raises(pa.ArrowInvalid):  # a value that does not fit the type asked for
        earlier.table(["distance", "flight"], types={"flight": pa.int8()})
    with pytest.raises(pa.ArrowInvalid):
        earlier.table(["distance", "flight"], types={"flight": pa.int8()}, mapped=False)
    assert not any(earlier.scratch_dir.iterdir())


def _mapped(buffer: pa.Buffer) -> bool:
    """Whether ``buffer`` lies in a file mapping of this process (a memory-mapped file, deleted or not)."""
    for line in open("/proc/self/maps"):
        span, _, _, _, inode, *path = line.split()
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= buffer.address < end:
            return inode != "0" and bool(path)
    return False


def test_a_drift_reference_is_a_seeded_sample_of_the_training_rows_read_in_batches(tmp_path):
    settings = LoopSettings(use_case="flight_delay", loop_data_dir=tmp_path)
    rows = load_completed((1, 2))[list(FlightCompleted.model_fields)]
    _format_1(settings, rows)
    source = SnapshotRows(settings, TOPIC, FlightCompleted, manifests_of(settings, TOPIC, ["old"]))
    names = ["flight_id", "carrier", "temp"]
    whole = source.columns(names)
    drawn = source.sample(10_000, seed=7, columns=names, batch_rows=7000)
    assert list(drawn.columns) == names and 9_000 < len(drawn) < 11_000
    assert drawn["flight_id"].is_unique and set(drawn["flight_id"]) <= set(whole["flight_id"])
    pd.testing.assert_frame_equal(drawn, source.sample(10_000, seed=7, columns=names, batch_rows=7000))
    assert not drawn["flight_id"].equals(source.sample(10_000, seed=8, columns=names)["flight_id"])
    shares = drawn["carrier"].value_counts(normalize=True) - whole["carrier"].value_counts(normalize=True)
    assert shares.abs().max() < 0.02  # drawn across the whole snapshot, not from its first rows
    pd.testing.assert_frame_equal(source.sample(len(rows), seed=7, columns=names), whole)  # no more: all of them
    # The monitor's reference of a version: the same sample, from the version's lineage and the loop's seed.
    uc = use_cases.selected(settings)
    reference = pipeline.training_rows(settings, uc, 1, [{"snapshot_id": "old"}], columns=names, sample=10_000)
    pd.testing.assert_frame_equal(reference, source.sample(10_000, settings.seed, names))


@pytest.mark.slow
@pytest.mark.parametrize("streamed", [False, True])
def test_flights_train_from_the_snapshot_as_from_the_frame(tmp_path, monkeypatch, streamed):
    from use_cases.flight_delay import evaluation, training

    if streamed:
        monkeypatch.setattr(training, "IN_MEMORY_INPUT_BYTES", 0)
    settings = LoopSettings(use_case="flight_delay", loop_data_dir=tmp_path, holdout_days=1, epochs=1, seed=2)
    rows = load_completed((1, 1), limit=6000)[list(FlightCompleted.model_fields)].sample(frac=1.0, random_state=3)
    _format_1(settings, rows, row_group=1024)
    uc = use_cases.selected(settings)
    earlier, _, _ = pipeline.earlier_rows(settings, uc, ["old"])
    order, label, scan = training._source(earlier)
    groups = list(scan())  # the fields the model reads, a row group at a time, in their narrowest types
    assert len(groups) > 3 and max(len(group) for group in groups) <= 1024
    assert sum(len(group) for group in groups) == len(order) == len(label) == earlier.count
    assert groups[0].column_names == list(training.prep.INPUT_FIELDS)
    schema = groups[0].schema
    assert schema.field("year").type == pa.int16() and pa.types.is_dictionary(schema.field("dest").type)
    from_table = uc.train_snapshot(earlier, settings)
    from_frame = uc.train(earlier.columns(None), settings)
    assert from_table.preprocessing == from_frame.preprocessing
    assert from_table.rows_train + from_table.rows_val == earlier.count
    np.testing.assert_array_equal(evaluation.score(from_table.model, from_table.preprocessing, rows),
                                  evaluation.score(from_frame.model, from_frame.preprocessing, rows))


def test_the_cycle_collector_is_off_while_a_piece_is_read_and_as_it_was_after():
    was = gc.isenabled()
    try:
        for before in (True, False):
            (gc.enable if before else gc.disable)()
            with _no_cycle_collection():
                assert not gc.isenabled()
            assert gc.isenabled() is before
        gc.enable()
        with pytest.raises(RuntimeError), _no_cycle_collection():
            raise RuntimeError("a piece failed")
        assert gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


def test_arrow_allocates_from_the_system_pool_while_pieces_are_read_and_from_its_own_after():
    before = pa.default_memory_pool()
    system = pa.system_memory_pool()
    with _system_memory_pool():
        assert pa.default_memory_pool().backend_name == "system"
        allocated = system.bytes_allocated()
        held = pa.array(np.arange(100_000)) * 2  # a new buffer from the system pool, freed to it after the block
        assert system.bytes_allocated() >= allocated + held.nbytes
    assert pa.default_memory_pool().backend_name == before.backend_name
    assert held.sum().as_py() == 9_999_900_000
    with pytest.raises(RuntimeError), _system_memory_pool():
        raise RuntimeError("a piece failed")
    assert pa.default_memory_pool().backend_name == before.backend_name
