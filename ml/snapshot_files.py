"""Read a snapshot's offset ranges into Parquet files, one per piece of at most ``PIECE`` offsets, on every core.

The pieces follow from the ranges alone and a piece's file from its offsets alone (rows in offset order, fixed
row groups), so a snapshot's files and hashes do not depend on how many processes read it. This process reads
pieces from the front of the list while worker processes (new interpreters: the caller's Kafka clients must not
be forked) read from the back, each with its own consumer and decoder, until they meet.
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
from confluent_kafka import Consumer

from ml.contracts import Contract
from ml.decode import Decoded
from ml.errors import LoopError
from ml.kafka_ranges import Batch, read_ranges, snapshot_consumer
from ml.settings import LoopSettings
from ml.wire import TopicDecoder

log = logging.getLogger(__name__)

PIECE = 65_536  # offsets per file: one row group
ROW_GROUP = 65_536  # fixed row-group size: the file's bytes depend only on the rows
READ_AHEAD = 4  # batches read ahead of the decoder: bounds memory to a few batches of raw values
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
    """Processes reading a snapshot, this one included: ``settings.snapshot_workers``, or one per usable core."""
    return settings.snapshot_workers or len(os.sched_getaffinity(0))


class _Reader:
    """One process's consumer and decoder, reused for every piece it reads."""

    def __init__(self, settings: LoopSettings, topic: str, contract: type[Contract]) -> None:
        self.topic = topic
        self.decoder = TopicDecoder(settings, topic, contract)
        self.consumer: Consumer = snapshot_consumer(settings)
        self.event_time = contract.EVENT_TIME

    def close(self) -> None:
        self.consumer.close()

    def read(self, piece: Piece, folder: Path, timeout: float, batch_size: int) -> PieceResult:
        """Decode the piece into ``folder/piece.file``; decoding and writing run in a second thread, as
        pyarrow parses and compresses without the GIL while this one keeps consuming."""
        self.decoder.rows_by_schema_id.clear()
        path = folder / piece.file
        tmp = path.with_name(path.name + ".tmp")
        result = PieceResult(piece, 0, "", None, None)
        pending: list[pa.Table] = []
        writer = pq.ParquetWriter(tmp, self.decoder.schema, compression="zstd")

        def decode_and_write(values: list[bytes | None], last: bool = False) -> Decoded | None:
            decoded = self.decoder.decode(values) if values else None
            if decoded is not None and decoded.table.num_rows:
                pending.append(decoded.table)
                low, high = pc.min_max(decoded.table.column(self.event_time)).values()
                result.rows += decoded.table.num_rows
                result.event_time_min = _earlier(result.event_time_min, low.as_py())
                result.event_time_max = _later(result.event_time_max, high.as_py())
            table = pa.concat_tables(pending) if pending else self.decoder.schema.empty_table()
            cut = table.num_rows if last else table.num_rows - table.num_rows % ROW_GROUP
            for a in range(0, cut, ROW_GROUP):
                writer.write_table(table.slice(a, ROW_GROUP), row_group_size=ROW_GROUP)
            pending[:] = [table.slice(cut)] if cut < table.num_rows else []
            return decoded

        def collect(batch: Batch, decoded: Decoded | None) -> None:
            for r in decoded.rejected if decoded else ():
                m = batch.messages[r.index]
                result.rejected.append({
                    "partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp()[1],
                    "error_class": r.error_class, "reason": r.reason,
                    "key_b64": base64.b64encode(m.key()).decode() if m.key() else None,
                    "original_b64": base64.b64encode(m.value() or b"").decode()})

        in_flight: deque[tuple[Batch, Future]] = deque()
        with _no_cycle_collection(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-decode") as pool:
            try:
                ranges = {piece.partition: (piece.start, piece.end)}
                for batch in read_ranges(self.consumer, self.topic, ranges, timeout, batch_size):
                    in_flight.append((batch, pool.submit(decode_and_write, batch.values)))
                    while len(in_flight) > READ_AHEAD or (in_flight and in_flight[0][1].done()):
                        done_batch, fut = in_flight.popleft()
                        collect(done_batch, fut.result())
                while in_flight:
                    done_batch, fut = in_flight.popleft()
                    collect(done_batch, fut.result())
                pool.submit(decode_and_write, [], True).result()
            finally:
                writer.close()
        result.sha256 = hashlib.sha256(tmp.read_bytes()).hexdigest()
        result.schema_ids = dict(self.decoder.rows_by_schema_id)
        os.replace(tmp, path)
        return result


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector off for the block (as it was after): a piece makes about ten thousand message
    objects a batch and no reference cycles, and the collector's passes over them took a fifth of the consuming
    thread's time (docs/performance.md). Reference counting still frees everything as it goes."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


class WorkerLost(LoopError):
    """A worker process died (killed, out of memory, could not start): its piece goes back to the queue."""


class _WorkerProcess:
    """A reader in a child process (``python -m ml.snapshot_files``): pickled pieces in on its stdin, pickled
    results out on its stdout. Started with the interpreter rather than multiprocessing, which would import the
    caller's main module again in the child."""

    def __init__(self, settings: LoopSettings, topic: str, contract: type[Contract]) -> None:
        # The caller's import path, so the child unpickles the contract wherever the caller found it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "ml.snapshot_files"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self._start: tuple | None = (settings, topic, contract)  # sent with the first piece

    def _send(self, obj: object) -> None:
        pickle.dump(obj, self.proc.stdin)
        self.proc.stdin.flush()

    def read(self, piece: Piece, folder: Path, timeout: float, batch_size: int) -> PieceResult:
        try:
            if self._start is not None:
                self._send(self._start)
                self._start = None
            self._send((piece, folder, timeout, batch_size))
            ok, answer = pickle.load(self.proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError) as e:
            raise WorkerLost(f"snapshot worker {self.proc.pid} exited (code {self.proc.wait()}) reading "
                             f"{piece}") from e
        if not ok:
            raise answer
        return answer

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve() -> None:
    """The child's side of ``_WorkerProcess``: read pieces until stdin closes."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the answers
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    requests = sys.stdin.buffer
    reader = _Reader(*pickle.load(requests))
    try:
        while True:
            try:
                piece, folder, timeout, batch_size = pickle.load(requests)
            except EOFError:
                return
            try:
                answer = (True, reader.read(piece, folder, timeout, batch_size))
            except Exception as e:  # the parent raises it
                answer = (False, e if _picklable(e) else LoopError(f"{type(e).__name__}: {e}"))
            pickle.dump(answer, answers)
            answers.flush()
    finally:
        reader.close()


def _picklable(e: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        return False
    return True


def read_pieces(settings: LoopSettings, topic: str, contract: type[Contract], todo: list[Piece], folder: Path,
                timeout: float, batch_size: int) -> list[PieceResult]:
    """Read every piece into its file under ``folder``; the results in piece order.

    Uses ``worker_count(settings) - 1`` worker processes besides this one when there are at least two pieces and
    ``PARALLEL_MIN_OFFSETS`` offsets. The first error of any reader stops the others and is raised here.
    """
    queue = deque(todo)
    lock = threading.Lock()
    results: dict[Piece, PieceResult] = {}
    errors: list[BaseException] = []
    by_workers = 0  # pieces the worker processes read

    def take(front: bool) -> Piece | None:
        with lock:
            if errors or not queue:
                return None
            return queue.popleft() if front else queue.pop()

    def run(front: bool, read: Callable[[Piece], PieceResult]) -> None:
        nonlocal by_workers
        try:
            while (piece := take(front)) is not None:
                try:
                    results[piece] = read(piece)
                except WorkerLost as e:
                    log.warning("%s: this process reads the pieces left", e)
                    with lock:
                        queue.append(piece)
                    return
                with lock:
                    by_workers += not front
        except BaseException as e:
            with lock:
                errors.append(e)

    workers = min(worker_count(settings), len(todo)) - 1
    if sum(p.end - p.start for p in todo) < PARALLEL_MIN_OFFSETS:
        workers = 0
    children = [_WorkerProcess(settings, topic, contract) for _ in range(workers)]
    threads = [threading.Thread(target=run, name=f"snapshot-worker-{child.proc.pid}", daemon=True,
                                args=(False, lambda p, c=child: c.read(p, folder, timeout, batch_size)))
               for child in children]
    own = _Reader(settings, topic, contract)
    try:
        for t in threads:
            t.start()
        run(True, lambda p: own.read(p, folder, timeout, batch_size))
        for t in threads:
            t.join()
        run(True, lambda p: own.read(p, folder, timeout, batch_size))  # a lost worker's piece
    finally:
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
