"""Decode batches of JSON records into Arrow tables that satisfy a topic contract, isolating the bad ones.

Two fast paths, both derived from the pydantic field metadata so the bounds live in one place
(``ml/contracts.py``): a small batch (a live stream's) is decoded record by record with a msgspec decoder
as strict as the contract (types, nullability, ``ge``/``gt``/``le``/``lt`` bounds, string lengths, literal
values, no unknown fields), on the calling thread; a large one (a backlog, a snapshot) is parsed whole with
``pyarrow.json`` from one buffer made without Python work per record (``JsonLines``, frame headers blanked in place)
and the same checks are applied vectorised. A fast path only needs to be at least as strict
as pydantic: a batch it cannot parse, and every record it refuses or flags, goes through the pydantic
contract record by record (in strict mode, matching the fast paths' typing), which decides: accept, or
reject with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from pydantic import BaseModel, ValidationError

from ml.contracts import arrow_schema, field_specs

# pydantic error types that mean "a value outside the contract's range" rather than a wrong shape or type.
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                          "string_too_short", "string_too_long", "literal_error", "finite_number"})

# Batches of up to this many records take the record-by-record path: pyarrow's JSON reader hands each call to
# its thread pools, and on a busy machine every handoff waits for a core, so a small batch costs far more wall
# time than CPU; from a few hundred records on, the reader costs less per record (docs/performance.md).
RECORD_BY_RECORD_MAX = 1_000

ERROR_UNDECODABLE = "undecodable"
ERROR_SCHEMA = "schema"
ERROR_RANGE = "range"


@dataclass(frozen=True)
class Rejection:
    """One record the contract refused: its position in the batch, error class and a readable reason."""

    index: int
    error_class: str  # undecodable | schema | range (the classes of the DeadLetter contract)
    reason: str


@dataclass(frozen=True)
class Decoded:
    """The rows a batch yielded, in input order: ``table`` row i came from input position ``accepted[i]``."""

    table: pa.Table
    accepted: np.ndarray
    rejected: list[Rejection]
    schema_ids: dict[int, int] = field(default_factory=dict)  # rows accepted by frame schema id (TopicDecoder)


class JsonLines:
    """A batch of values as one buffer for pyarrow's JSON reader, one value a line, made with no Python work per value
    but a ``len``: the first ``skip`` bytes of each value (a frame header the caller reads, ``heads``) are blanked to
    spaces, which JSON skips. Made by ``of``, which refuses a small batch and one with a value holding no record."""

    def __init__(self, values: list[bytes], skip: int, buffer: bytearray, starts: np.ndarray) -> None:
        self.values = values
        self.skip = skip
        self.buffer = buffer
        at = starts[:, None] + np.arange(skip)
        text = np.frombuffer(buffer, dtype=np.uint8)
        self.heads = text[at]  # each value's first ``skip`` bytes, one row each
        text[at] = ord(" ")

    @classmethod
    def of(cls, values: list[bytes | None], skip: int = 0) -> JsonLines | None:
        """The lines of a batch to parse whole; None for a small batch (at most ``RECORD_BY_RECORD_MAX`` values: decoded
        record by record), or when a value is null or no longer than ``skip`` (no record to read)."""
        if len(values) <= RECORD_BY_RECORD_MAX:
            return None
        try:
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        except TypeError:  # a null value
            return None
        if lengths.min() <= skip:  # refused before the join, which copies the batch
            return None
        buffer = bytearray(b"\n").join(values)
        starts = np.zeros(len(values), dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
        return cls(values, skip, buffer, starts)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class _FieldCheck:
    name: str
    nullable: bool
    bounds: tuple[tuple[str, float], ...]  # (arrow comparison that marks a violation, bound)
    min_len: int | None
    max_len: int | None
    literals: tuple | None


# A value violates ge=x when it is less than x, and so on.
_VIOLATION = (("ge", "less"), ("gt", "less_equal"), ("le", "greater"), ("lt", "greater_equal"))
_NUMPY_COMPARISON = {"less": np.less, "less_equal": np.less_equal, "greater": np.greater,
                     "greater_equal": np.greater_equal}


def _mask(flags: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An Arrow boolean column as a numpy mask, null read as False."""
    return (pc.fill_null(flags, False) if flags.null_count else flags).to_numpy(zero_copy_only=False)


def field_checks(contract: type[BaseModel]) -> list[_FieldCheck]:
    """The vectorisable checks of each contract field, from the contract's field specs."""
    checks = []
    for f in field_specs(contract):
        bounds = tuple((op, getattr(f, attr)) for attr, op in _VIOLATION if getattr(f, attr) is not None)
        checks.append(_FieldCheck(f.name, f.nullable, bounds, f.min_len, f.max_len, f.literals))
    return checks


def record_struct(contract: type[BaseModel], ignore: frozenset[str] = frozenset()) -> type[msgspec.Struct]:
    """A msgspec Struct at least as strict as ``contract``: its types (strict: no coercion), nullability,
    bounds, string lengths, literal values and defaults, no unknown fields but those in ``ignore`` (any value,
    after the contract's fields). Timestamps stay strings: the decoder casts them column-wise, as on the
    pyarrow path."""
    fields: list[tuple] = []
    for spec in field_specs(contract):
        typ = Literal[spec.literals] if spec.literals else str if spec.base is datetime else spec.base
        meta = {key: value for key, value in (("ge", spec.ge), ("gt", spec.gt), ("le", spec.le), ("lt", spec.lt),
                                               ("min_length", spec.min_len), ("max_length", spec.max_len))
                if value is not None}
        if meta:
            typ = Annotated[typ, msgspec.Meta(**meta)]
        if spec.nullable:
            typ = typ | None
        info = contract.model_fields[spec.name]
        # A default made by a factory is left to pydantic: the record goes the per-record path.
        required = info.is_required() or info.default_factory is not None
        fields.append((spec.name, typ) if required else (spec.name, typ, info.default))
    fields += [(name, Any, None) for name in sorted(ignore)]
    return msgspec.defstruct(contract.__name__, fields, kw_only=True, forbid_unknown_fields=True)


class ContractDecoder:
    """Decodes JSON record values of one contract; build once per topic, call ``decode`` per batch.

    ``ignore`` names fields records may carry that the contract does not know (a newer compatible schema's):
    they are left out; any other unknown field is refused as before. ``batches_at_once``: the caller decodes several
    large batches at a time (a snapshot), so each is parsed as one block and the batches share the cores; otherwise
    the JSON reader cuts a batch into blocks (1 MiB) that its threads parse side by side.
    """

    def __init__(self, contract: type[BaseModel], ignore: frozenset[str] = frozenset(), *,
                 batches_at_once: bool = False) -> None:
        self.contract = contract
        self.ignore = ignore
        self.batches_at_once = batches_at_once
        self.schema = arrow_schema(contract)
        self.checks = field_checks(contract)
        self._empty = self.schema.empty_table()
        self._timestamps = [f.name for f in self.schema if pa.types.is_timestamp(f.type)]
        # Parse timestamps as strings and every field as nullable: the cast below refuses strings without
        # a zone offset (pyarrow's JSON reader would read them as UTC, pydantic's AwareDatetime refuses
        # them), and a null in a required field flags that row instead of failing the whole batch.
        parse_fields = [pa.field(f.name, pa.string() if f.name in self._timestamps else f.type)
                        for f in self.schema]
        self._parse = pj.ParseOptions(explicit_schema=pa.schema(parse_fields),
                                      unexpected_field_behavior="infer" if ignore else "error")
        self._parse_types = [f.type for f in parse_fields]
        self._record = msgspec.json.Decoder(record_struct(contract, ignore))
        self._known = frozenset(self.schema.names) | ignore

    @property
    def parse_options(self) -> pj.ParseOptions:
        """The JSON reader's options for a batch of records: the explicit schema it parses with."""
        return self._parse

    @property
    def record_decoder(self) -> msgspec.json.Decoder:
        """The decoder of one record at a time (small batches), typed as strictly as the contract."""
        return self._record

    def decode(self, values: list[bytes | None]) -> Decoded:
        """Decode one batch of record values; never raises for bad records, it rejects them."""
        lines = JsonLines.of(values)
        if lines is not None:
            return self.decode_lines(lines)
        present = [i for i, v in enumerate(values) if v]
        slow = [i for i, v in enumerate(values) if not v]
        fast_table, fast_idx = self._empty, np.empty(0, dtype=np.int64)
        if present:
            batch = [values[i] for i in present]
            parsed = self._parse_each(batch) if len(batch) <= RECORD_BY_RECORD_MAX else \
                self._parse_lines(JsonLines.of(batch))  # every value is present
            if parsed is None:
                slow.extend(present)
            else:
                fast_table, bad = parsed
                idx = np.asarray(present, dtype=np.int64)
                fast_idx = idx[~bad]
                slow.extend(idx[bad].tolist())
        return self._with_slow(fast_table, fast_idx, values, sorted(slow), 0)

    def decode_lines(self, lines: JsonLines) -> Decoded:
        """``decode`` of a large batch of present values (``JsonLines``), their records after its ``skip`` bytes."""
        parsed = self._parse_lines(lines)
        if parsed is None:
            return self._with_slow(self._empty, np.empty(0, dtype=np.int64), lines.values, range(len(lines)),
                                   lines.skip)
        table, bad = parsed
        every = np.arange(len(lines), dtype=np.int64)
        return self._with_slow(table, every[~bad], lines.values, np.flatnonzero(bad).tolist(), lines.skip)

    def _with_slow(self, fast_table: pa.Table, fast_idx: np.ndarray, values: list[bytes | None], slow: Iterable[int],
                   skip: int) -> Decoded:
        """The fast path's rows with those of positions ``slow``, validated one by one (after ``skip`` bytes)."""
        rows, slow_idx, rejected = self._validate_each(values, slow, skip)
        if not rows:
            return Decoded(fast_table, fast_idx, rejected)
        table = pa.concat_tables([fast_table, pa.Table.from_pylist(rows, schema=self.schema)])
        accepted = np.concatenate([fast_idx, np.asarray(slow_idx, dtype=np.int64)])
        order = np.argsort(accepted, kind="stable")  # back to input order, whichever path decoded a row
        return Decoded(table.take(pa.array(order)), accepted[order], rejected)

    def _parse_each(self, values: list[bytes]) -> tuple[pa.Table, np.ndarray] | None:
        """The records the msgspec decoder accepts as a contract table, and a mask of the others; None if
        the accepted ones do not make a table (a timestamp without a zone, an integer beyond 64 bits)."""
        rows, bad = [], np.zeros(len(values), dtype=bool)
        for i, value in enumerate(values):
            try:
                rows.append(self._record.decode(value))
            except msgspec.MsgspecError:  # malformed JSON, or a type, bound or field the contract refuses
                bad[i] = True
        if not rows:
            return self._empty, bad
        n = len(self._parse_types)
        tuples = map(msgspec.structs.astuple, rows) if not self.ignore else \
            (msgspec.structs.astuple(r)[:n] for r in rows)
        try:
            columns = [pa.array(column, typ)
                       for column, typ in zip(zip(*tuples, strict=True), self._parse_types, strict=True)]
        except (pa.ArrowException, OverflowError):
            return None
        table = self._typed(columns)
        return None if table is None else (table, bad)

    def _parse_lines(self, lines: JsonLines | None) -> tuple[pa.Table, np.ndarray] | None:
        """The rows of the batch the checks do not flag, as a contract table, and a mask of the flagged
        ones; None if the batch does not parse."""
        if lines is None:
            return None
        try:
            table = pj.read_json(pa.BufferReader(lines.buffer), parse_options=self._parse,
                                 read_options=pj.ReadOptions(block_size=len(lines.buffer) + 1)
                                 if self.batches_at_once else None)
        except pa.ArrowInvalid:
            return None
        # A value holding a raw newline splits into two lines: not one row each.
        if table.num_rows != len(lines):
            return None
        if self.ignore and not self._known.issuperset(table.column_names):
            return None  # a field no schema knows: the record-by-record path refuses those records
        table = self._typed([table.column(f.name) for f in self.schema])
        if table is None:
            return None
        bad = self._flagged(table)
        return (table.filter(pa.array(~bad)) if bad.any() else table), bad

    def _typed(self, columns: list[pa.Array | pa.ChunkedArray]) -> pa.Table | None:
        """Parsed columns (timestamps as strings) as a contract table; None when a timestamp does not cast."""
        try:
            columns = [pc.cast(column, f.type) if f.name in self._timestamps else column
                       for column, f in zip(columns, self.schema, strict=True)]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _flagged(self, table: pa.Table) -> np.ndarray:
        """Rows that break a check (or may: the record-by-record path decides). Numbers are compared in
        numpy (nulls read as NaN, which no comparison flags): a scorer's batch is small, and an Arrow kernel
        call costs more than the comparison."""
        flags = [np.zeros(table.num_rows, dtype=bool)]
        for check in self.checks:
            col = table.column(check.name)
            if not check.nullable and col.null_count:
                flags.append(_mask(pc.is_null(col)))
            if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
                values = col.to_numpy()
                flags += [_NUMPY_COMPARISON[op](values, bound) for op, bound in check.bounds]
                if pa.types.is_floating(col.type):
                    nan = np.isnan(values)
                    flags.append(nan & _mask(col.is_valid()) if col.null_count else nan)
            else:
                flags += [_mask(getattr(pc, op)(col, bound)) for op, bound in check.bounds]
            if check.min_len is not None or check.max_len is not None:
                length = pc.utf8_length(col).to_numpy()
                if check.min_len is not None:
                    flags.append(length < check.min_len)
                if check.max_len is not None:
                    flags.append(length > check.max_len)
            if check.literals is not None:
                flags.append(_mask(pc.invert(pc.is_in(col, pa.array(check.literals, col.type)))))
        return np.logical_or.reduce(flags)

    def _validate_each(self, values: list[bytes | None], idx: Iterable[int], skip: int
                       ) -> tuple[list[dict], list[int], list[Rejection]]:
        rows, accepted, rejected = [], [], []
        for i in idx:
            value = values[i]
            if value and skip:
                value = value[skip:]
            if not value:
                rejected.append(Rejection(i, ERROR_UNDECODABLE, "empty value (null or zero bytes)"))
                continue
            if self.ignore:
                value = _without(value, self.ignore)
            try:
                # Strict: JSON types must match the field types ("2013" is not an int, 1.0 not an int, "yes"
                # not a bool), the same rule pyarrow's parser applies on the fast path.
                record = self.contract.model_validate_json(value, strict=True)
            except ValidationError as exc:
                rejected.append(Rejection(i, classify(exc), _reason(exc)))
                continue
            rows.append(record.model_dump())
            accepted.append(i)
        return rows, accepted, rejected


def _without(value: bytes, fields: frozenset[str]) -> bytes:
    """The JSON object ``value`` without ``fields``; ``value`` itself when it is not a JSON object."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    if not isinstance(doc, dict):
        return value
    return orjson.dumps({k: v for k, v in doc.items() if k not in fields})


def classify(exc: ValidationError) -> str:
    """The error class of a contract violation: undecodable JSON, a wrong shape/type, or a range."""
    kinds = {e["type"] for e in exc.errors()}
    if "json_invalid" in kinds or "model_type" in kinds:
        return ERROR_UNDECODABLE
    return ERROR_RANGE if kinds <= RANGE_ERRORS else ERROR_SCHEMA


def _reason(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for e in exc.errors()[:limit]:
        where = ".".join(str(p) for p in e["loc"]) or "value"
        parts.append(f"{where}: {e['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")

