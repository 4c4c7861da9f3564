"""Columns of JSON value literals computed in Arrow, and JSON objects assembled from them, with no Python work
per row: how replays encode events and the scorer encodes its outputs."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pyarrow.compute as pc

_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def _json_strings(arr: pa.Array) -> pa.Array:
    """A string column as JSON string literals: quoted directly unless a value needs escaping."""
    arr = arr.cast(pa.string())
    if not pc.any(pc.match_substring_regex(arr, _NEEDS_ESCAPE)).as_py():
        return pc.binary_join_element_wise('"', arr, '"', "")
    # Rare: let orjson escape each distinct value once.
    enc = pc.dictionary_encode(arr)
    words = pa.array([orjson.dumps(v).decode() for v in enc.dictionary.to_pylist()], pa.string())
    return pc.take(words, enc.indices)


def _json_timestamps(arr: pa.Array) -> pa.Array:
    """UTC timestamps as ISO-8601 strings with a ``Z``: whole seconds, or milliseconds when needed."""
    try:
        naive = arr.cast(pa.timestamp("s"))  # dropping the zone keeps the UTC wall time
    except pa.ArrowInvalid:  # sub-second values: keep the contract's millisecond precision
        naive = arr.cast(pa.timestamp("ms"))
    text = pc.replace_substring(naive.cast(pa.string()), " ", "T", max_replacements=1)
    return pc.binary_join_element_wise('"', text, 'Z"', "")


def json_column(arr: pa.Array) -> pa.Array:
    """One column as JSON value literals (``null`` for NA/NaN). Raises ValueError for infinite floats and
    TypeError for a type without a JSON form."""
    typ = arr.type
    if pa.types.is_timestamp(typ):
        out = _json_timestamps(arr)
    elif pa.types.is_boolean(typ):
        out = pc.if_else(arr, "true", "false")
    elif pa.types.is_floating(typ):
        if pc.any(pc.is_inf(arr)).as_py():
            raise ValueError("infinite float values have no JSON form and no place in the contract")
        out = pc.if_else(pc.is_nan(arr), pa.scalar(None, pa.string()), arr.cast(pa.string()))
    elif pa.types.is_integer(typ):
        out = arr.cast(pa.string())
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        out = _json_strings(arr)
    else:
        raise TypeError(f"no JSON encoding for Arrow type {typ}")
    return pc.fill_null(out, "null")


def literal(value: object) -> str:
    """One constant as a JSON literal, for a column whose every row has the same value."""
    return orjson.dumps(value).decode()


def encode_records(columns: dict[str, pa.Array | str], fields: list[str]) -> pa.Array:
    """JSON objects (one binary value per row) of ``fields``, from ``json_column`` columns or constant
    ``literal`` strings."""
    parts: list[object] = []
    for i, name in enumerate(fields):
        parts.append(("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":")
        parts.append(columns[name])
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "").cast(pa.binary())
