"""Read a snapshot's offset ranges into Parquet files, one per piece of at most ``PIECE`` offsets, on every core.

The pieces follow from the ranges alone and a piece's file from its offsets alone (rows in offset order, fixed
row groups), so a snapshot's files and hashes do not depend on how many processes read it. A process keeps about
two cores busy: one pipeline runs through all the pieces it reads (its thread consumes, ``DECODERS`` threads decode,
one appends to the files, one finishes them), and consecutive pieces of a partition are one fetch. The snapshot
process makes its reader while it plans (``reader_ahead``). Past two cores, worker processes (new
interpreters: the caller's Kafka clients must not be forked) each read a share of the pieces (``Schedule``) with
their own consumer and decoder.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaException

from ml.contracts import Contract, arrow_schema
from ml.decode import Decoded
from ml.errors import LoopError
from ml.kafka_ranges import Batch, RangeReader, snapshot_consumer
from ml.settings import LoopSettings
from ml.wire import TopicDecoder

log = logging.getLogger(__name__)

PIECE = 65_536  # offsets per file: one row group
ROW_GROUP = 65_536  # fixed row-group size: the file's bytes depend only on the rows
# Batches decoded at once: while one is parsed, another is checked and cast, and their writes go on beside them.
DECODERS = 3
READ_AHEAD = 3 * DECODERS  # batches read ahead of the writes: bounds memory to a few batches of raw values
FINISHING = 2  # pieces read whose files are still being finished: bounds memory to a few pieces of rows
CORES_PER_PROCESS = 2  # what one reading process keeps busy (docs/performance.md)
# Below this many offsets a worker's start (about a second: Python, pyarrow and the Kafka client) costs more than
# it saves.
PARALLEL_MIN_OFFSETS = 8 * PIECE


@dataclass(frozen=True, order=True)
class Piece:
    """Offsets ``[start, end)`` of one partition, written to one file."""

    partition: int
    start: int
    end: int

    @property
    def file(self) -> str:
        return f"part-{self.partition:05d}-{self.start:020d}.parquet"


@dataclass
class PieceResult:
    """What reading one piece wrote and found: its file's rows and hash, event-time range, rejects, rows by
    schema id."""

    piece: Piece
    rows: int
    sha256: str
    event_time_min: datetime | None
    event_time_max: datetime | None
    rejected: list[dict] = field(default_factory=list)
    schema_ids: dict[int, int] = field(default_factory=dict)


def pieces(ranges: dict[int, tuple[int, int]], size: int | None = None) -> list[Piece]:
    """The ranges cut into pieces of at most ``size`` offsets (default ``PIECE``), in (partition, offset) order."""
    size = size or PIECE
    return [Piece(p, a, min(a + size, end)) for p, (start, end) in sorted(ranges.items())
            for a in range(start, end, size)]


def worker_count(settings: LoopSettings) -> int:
    """Processes reading a snapshot, this one included: ``settings.snapshot_workers``, or one per
    ``CORES_PER_PROCESS`` usable cores (at least one)."""
    return settings.snapshot_workers or max(1, len(os.sched_getaffinity(0)) // CORES_PER_PROCESS)


class _PieceFile:
    """One piece's file as it is written: decoded batches appended in offset order as row groups of ``ROW_GROUP``
    rows, then closed, hashed and moved into place (``finish``). Called from one thread at a time."""

    def __init__(self, piece: Piece, folder: Path, schema: pa.Schema, event_time: str) -> None:
        self.path = folder / piece.file
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.result = PieceResult(piece, 0, "", None, None)
        self.event_time = event_time
        self.schema = schema
        self._pending: list[pa.Table] = []
        self._writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write(self, batch: Batch, decoding: Future) -> None:
        """Append one batch once it is decoded: its rows, its rejects with their Kafka positions."""
        decoded: Decoded = decoding.result()
        result = self.result
        for r in decoded.rejected:
            m = batch.messages[r.index]
            result.rejected.append({
                "partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp()[1],
                "error_class": r.error_class, "reason": r.reason,
                "key_b64": base64.b64encode(m.key()).decode() if m.key() else None,
                "original_b64": base64.b64encode(m.value() or b"").decode()})
        for schema_id, rows in decoded.schema_ids.items():
            result.schema_ids[schema_id] = result.schema_ids.get(schema_id, 0) + rows
        if decoded.table.num_rows:
            self._pending.append(decoded.table)
            low, high = pc.min_max(decoded.table.column(self.event_time)).values()
            result.rows += decoded.table.num_rows
            result.event_time_min = _earlier(result.event_time_min, low.as_py())
            result.event_time_max = _later(result.event_time_max, high.as_py())
            self._write_row_groups(last=False)

    def finish(self) -> PieceResult:
        """Write the last rows, close the file, hash it and move it into place."""
        self._write_row_groups(last=True)
        self._writer.close()
        self.result.sha256 = hashlib.sha256(self.tmp.read_bytes()).hexdigest()
        os.replace(self.tmp, self.path)
        return self.result

    def close(self) -> None:
        """Close the file if ``finish`` was not reached (an error): the partial file stays a ``.tmp``."""
        if self._writer.is_open:
            self._writer.close()

    def _write_row_groups(self, last: bool) -> None:
        table = pa.concat_tables(self._pending) if self._pending else self.schema.empty_table()
        # A full row group that may be the piece's last is left to ``finish``: a whole piece's compression then
        # runs on the finishing thread, beside the next piece's writes.
        cut = table.num_rows if last else max(0, (table.num_rows - 1) // ROW_GROUP * ROW_GROUP)
        for a in range(0, cut, ROW_GROUP):
            # One chunk per column: Parquet's pages are cut where the chunks end too, and the batches a piece
            # arrives in depend on how it was read (a piece that continues another starts with its leftovers).
            self._writer.write_table(table.slice(a, ROW_GROUP).combine_chunks(), row_group_size=ROW_GROUP)
        self._pending = [table.slice(cut)] if cut < table.num_rows else []


class _Reader:
    """One process's consumer and decoder, reused for every piece it reads."""

    def __init__(self, decoder: Future[TopicDecoder], consumer: Consumer, topic: str, contract: type[Contract]
                 ) -> None:
        self.topic = topic
        self.decoder = decoder  # first needed by the first batch: one made ahead may be built meanwhile
        self.consumer = consumer
        self.ranges = RangeReader(self.consumer, topic)  # consecutive pieces of a partition: one fetch
        self.schema = arrow_schema(contract)
        self.event_time = contract.EVENT_TIME

    @classmethod
    def open(cls, settings: LoopSettings, topic: str, contract: type[Contract]) -> _Reader:
        decoder: Future[TopicDecoder] = Future()
        decoder.set_result(_prepared_decoder(settings, topic, contract))
        return cls(decoder, snapshot_consumer(settings), topic, contract)

    def close(self) -> None:
        self.consumer.close()

    def read(self, todo: Iterator[Piece], done: Callable[[PieceResult], None], folder: Path, timeout: float,
             batch_size: int) -> None:
        """Read each piece ``todo`` yields (the next is drawn once the last one's records are all consumed) into
        ``folder/piece.file`` and call ``done`` with its result, in order, from the finishing thread.

        One pipeline runs through all the pieces, so nothing waits at a piece's end: this thread consumes,
        ``DECODERS`` batches are decoded at a time, one more thread appends them to their files in order, and one
        finishes each file (compresses, closes and hashes it) while the next piece's batches go on being appended
        (pyarrow parses and compresses without the GIL)."""
        in_flight: deque[Future] = deque()  # batches not yet appended: what bounds the read-ahead
        finishing: deque[Future] = deque()
        files: list[_PieceFile] = []

        def finish(out: _PieceFile, appended: Future | None) -> None:
            if appended is not None:
                appended.result()  # the piece's last batch is in
            done(out.finish())

        try:
            with _no_cycle_collection(), _system_memory_pool(), \
                    ThreadPoolExecutor(max_workers=DECODERS, thread_name_prefix="snapshot-decode") as decoders, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-write") as writes, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-finish") as finishes:
                for piece in todo:
                    out = _PieceFile(piece, folder, self.schema, self.event_time)
                    files.append(out)
                    appended = None
                    for batch in self.ranges.read(piece.partition, piece.start, piece.end, timeout, batch_size):
                        decoding = decoders.submit(self.decoder.result().decode, batch.values)
                        in_flight.append(appended := writes.submit(out.write, batch, decoding))
                        while len(in_flight) > READ_AHEAD or (in_flight and in_flight[0].done()):
                            in_flight.popleft().result()
                        # At most FINISHING pieces' rows wait to be compressed.
                        while len(finishing) > FINISHING or (finishing and finishing[0].done()):
                            finishing.popleft().result()
                    finishing.append(finishes.submit(finish, out, appended))
                for waiting in (in_flight, finishing):
                    while waiting:
                        waiting.popleft().result()
        finally:
            for out in files:
                out.close()


@contextlib.contextmanager
def reader_ahead(settings: LoopSettings, topic: str, contract: type[Contract], timeout: float
                 ) -> Iterator[Callable[[], _Reader]]:
    """This process's reader of ``topic``, started on other threads while the caller plans what to read: its
    consumer connects and learns the partitions' leaders, its decoder looks the subject's latest schema up, so the
    first fetch and the first decode wait for neither. Yields a function returning the reader; closed after the
    block."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="snapshot-start") as pool:
        consumer = pool.submit(_connected_consumer, settings, topic, timeout)
        decoder = pool.submit(_prepared_decoder, settings, topic, contract)
        try:
            yield lambda: _Reader(decoder, consumer.result(), topic, contract)
        finally:
            if consumer.exception() is None:
                consumer.result().close()


def _prepared_decoder(settings: LoopSettings, topic: str, contract: type[Contract]) -> TopicDecoder:
    """A decoder of ``topic`` that has looked the subject's latest schema up. The reading waits for it before its first
    decode, so the lookup does not share the GIL with the consuming of the next batches."""
    decoder = TopicDecoder(settings, topic, contract, batches_at_once=True)  # DECODERS batches at a time
    try:
        decoder.prepare()
    except Exception as e:  # only a head start: decoding looks the schema up again (and raises what it meets)
        log.debug("%s: the latest schema was not looked up ahead: %s", topic, e)
    return decoder


def _connected_consumer(settings: LoopSettings, topic: str, timeout: float) -> Consumer:
    """A snapshot consumer that has asked for ``topic``'s metadata, so an assignment fetches at once (a new consumer
    left idle before its first assignment was slow to fetch)."""
    consumer = snapshot_consumer(settings)
    with contextlib.suppress(KafkaException):  # planning reports an unreachable broker or a missing topic
        consumer.list_topics(topic, timeout)
    return consumer


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector off for the block (as it was after), a process's reading of its pieces: each
    batch makes about ten thousand message objects and no reference cycles, and the collector's passes over them
    took a fifth of the consuming thread's time (docs/performance.md). Reference counting still frees everything as
    it goes."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def _system_memory_pool() -> Iterator[None]:
    """Arrow's allocations in the block from the C library's allocator rather than its default, mimalloc (as it was
    after; a buffer is freed to the pool it came from): the reader's buffers are made on the decoding threads and
    freed on the writing one, and with mimalloc a year's snapshot read about 5% slower for about 5% more CPU
    (docs/performance.md)."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


class WorkerLost(LoopError):
    """A worker process died (killed, out of memory, could not start): ``pieces``, the ones it had not answered,
    go back to the schedule."""

    def __init__(self, message: str, pieces: list[Piece]) -> None:
        super().__init__(message)
        self.pieces = pieces


class _WorkerProcess:
    """A reader in a child process (``python -m ml.snapshot_files``): pickled pieces in on its stdin, pickled
    results out on its stdout. Started with the interpreter rather than multiprocessing, which would import the
    caller's main module again in the child."""

    AHEAD = 2  # pieces sent before their answers: the child draws its next piece as it finishes consuming one

    def __init__(self, settings: LoopSettings, topic: str, contract: type[Contract]) -> None:
        # The caller's import path, so the child unpickles the contract wherever the caller found it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "ml.snapshot_files"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self._start = (settings, topic, contract)

    def _send(self, obj: object) -> None:
        pickle.dump(obj, self.proc.stdin)
        self.proc.stdin.flush()

    def read(self, todo: Callable[[], Piece | None], done: Callable[[PieceResult], None], folder: Path,
             timeout: float, batch_size: int) -> None:
        """Have the child read the pieces ``todo`` gives (sent ``AHEAD`` of their answers, so it never waits for
        the next) and call ``done`` with each result, in order. Raises the child's error, or WorkerLost."""
        sent: deque[Piece] = deque()
        try:
            self._send((*self._start, folder, timeout, batch_size))
            while True:
                while len(sent) < self.AHEAD and (piece := todo()) is not None:
                    sent.append(piece)
                    self._send(piece)
                if not sent:
                    return
                ok, answer = pickle.load(self.proc.stdout)
                if not ok:
                    raise answer
                done(answer)
                sent.popleft()
        except (EOFError, BrokenPipeError, pickle.UnpicklingError) as e:
            raise WorkerLost(f"snapshot worker {self.proc.pid} exited (code {self.proc.wait()}) reading "
                             f"{', '.join(map(str, sent))}", list(sent)) from e

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve() -> None:
    """The child's side of ``_WorkerProcess``: read the pieces that come until stdin closes, answering each."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the answers
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    requests = sys.stdin.buffer
    settings, topic, contract, folder, timeout, batch_size = pickle.load(requests)

    def todo() -> Iterator[Piece]:
        while True:
            try:
                yield pickle.load(requests)
            except EOFError:
                return

    def answer(ok: bool, what: object) -> None:
        pickle.dump((ok, what), answers)
        answers.flush()

    reader = _Reader.open(settings, topic, contract)
    try:
        reader.read(todo(), lambda result: answer(True, result), folder, timeout, batch_size)
    except Exception as e:  # the parent raises it
        answer(False, e if _picklable(e) else LoopError(f"{type(e).__name__}: {e}"))
    finally:
        reader.close()


def _picklable(e: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        return False
    return True


class Schedule:
    """Which piece each of ``readers`` reads next. Reader ``r`` starts at piece ``r * len(todo) // readers`` and
    goes on in order while nobody has taken its next piece, so it reads runs of consecutive pieces of a partition,
    each run one fetch (``RangeReader``); past that it takes the middle of the longest run of pieces nobody has
    taken (work stolen in halves: the readers finish about together). Not thread-safe: the caller locks."""

    def __init__(self, todo: list[Piece], readers: int) -> None:
        self.todo = todo
        self._free = [True] * len(todo)
        self._next = [r * len(todo) // readers for r in range(readers)]

    def take(self, reader: int) -> Piece | None:
        """The next piece for ``reader``; None when every piece is taken."""
        i = self._next[reader]
        if i >= len(self.todo) or not self._free[i]:
            i = self._stolen()
            if i is None:
                return None
        self._free[i] = False
        self._next[reader] = i + 1
        return self.todo[i]

    def give_back(self, piece: Piece) -> None:
        """``piece`` is free again (its reader was lost)."""
        self._free[self.todo.index(piece)] = True

    def _stolen(self) -> int | None:
        """The middle of the longest run of free pieces (its second half goes to the thief); None if none."""
        best, run_start, best_len = None, 0, 0
        for i, free in enumerate([*self._free, False]):
            if not free:
                if i - run_start > best_len:
                    best, best_len = run_start + (i - run_start) // 2, i - run_start
                run_start = i + 1
        return best


def read_pieces(settings: LoopSettings, topic: str, contract: type[Contract], todo: list[Piece], folder: Path,
                timeout: float, batch_size: int, reader: _Reader | None = None) -> list[PieceResult]:
    """Read every piece into its file under ``folder``; the results in piece order. This process reads with
    ``reader`` (the caller closes it) or one of its own.

    Uses ``worker_count(settings) - 1`` worker processes besides this one when there are at least two pieces and
    ``PARALLEL_MIN_OFFSETS`` offsets, the pieces dealt by a ``Schedule``. The first error of any reader stops the
    others and is raised here.
    """
    lock = threading.Lock()
    results: dict[Piece, PieceResult] = {}
    errors: list[BaseException] = []
    by_workers = 0  # pieces the worker processes read

    workers = min(worker_count(settings), len(todo)) - 1
    if sum(p.end - p.start for p in todo) < PARALLEL_MIN_OFFSETS:
        workers = 0
    schedule = Schedule(todo, workers + 1)

    def run(reader: int, read: Callable[[Callable[[], Piece | None], Callable[[PieceResult], None]], None]
            ) -> None:
        def take() -> Piece | None:
            with lock:
                return None if errors else schedule.take(reader)

        def keep(result: PieceResult) -> None:
            nonlocal by_workers
            with lock:
                results[result.piece] = result
                by_workers += reader > 0

        try:
            read(take, keep)
        except WorkerLost as e:
            log.warning("%s: this process reads the pieces left", e)
            with lock:
                for piece in e.pieces:
                    schedule.give_back(piece)
        except BaseException as e:
            with lock:
                errors.append(e)

    def own_read(take: Callable[[], Piece | None], keep: Callable[[PieceResult], None]) -> None:
        own.read(iter(take, None), keep, folder, timeout, batch_size)

    children = [_WorkerProcess(settings, topic, contract) for _ in range(workers)]
    threads = [threading.Thread(target=run, name=f"snapshot-worker-{child.proc.pid}", daemon=True,
                                args=(r, lambda take, keep, c=child: c.read(take, keep, folder, timeout, batch_size)))
               for r, child in enumerate(children, start=1)]
    own = reader or _Reader.open(settings, topic, contract)
    try:
        for t in threads:
            t.start()
        run(0, own_read)
        for t in threads:
            t.join()
        run(0, own_read)  # a lost worker's pieces
    finally:
        if reader is None:
            own.close()
        for child in children:
            child.close()
    if errors:
        raise errors[0]
    log.info("%s: %d pieces read by %d processes (%d by worker processes)", topic, len(todo), workers + 1,
             by_workers)
    return [results[p] for p in todo]


if __name__ == "__main__":
    # Under its own name, not __main__, so what it pickles back unpickles in the parent.
    from ml.snapshot_files import _serve as serve

    serve()
