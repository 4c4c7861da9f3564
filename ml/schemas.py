"""Every topic's value schema, derived from its contract, in a Confluent-compatible schema registry.

One subject per topic value (``<topic>-value``, Confluent's TopicNameStrategy), a JSON Schema generated from the
pydantic contract (the one definition; ``docs/contracts.md`` is the readable one), and a compatibility level per
subject, BACKWARD by default: a consumer on the new schema reads every record written with the old ones.
``register`` puts them in the registry; ``check`` asks whether the code's contracts may be registered, and
names each field that breaks compatibility (the registry says only that a rule was violated).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from ml.contracts import DeadLetter, ModelStatus
from ml.settings import TopicNames

# Apicurio's JSON Schema checks read keywords as draft 7 defines them (a numeric exclusiveMinimum), which is
# also what pydantic generates; without the $schema they are read as draft 4's and fail.
JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
SCHEMA_TYPE = "JSON"
DEFAULT_COMPATIBILITY = "BACKWARD"
# Compatibility levels (Confluent's names) at least as strict as BACKWARD: each keeps old records readable.
BACKWARD_OR_STRICTER = ("BACKWARD", "BACKWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE")


def subject(topic: str) -> str:
    """The registry subject of ``topic``'s record values (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


def json_schema(contract: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of ``contract``'s records: closed (no unknown fields), with its bounds and defaults."""
    return {"$schema": JSON_SCHEMA_DRAFT, **contract.model_json_schema()}


def canonical(schema: Mapping[str, Any]) -> str:
    """The schema text sent to the registry: sorted keys, so the same contract always yields the same text."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class TopicSchema:
    """A topic, the contract of its record values, and the compatibility level of its subject."""

    topic: str
    contract: type[BaseModel]
    compatibility: str = DEFAULT_COMPATIBILITY

    @property
    def subject(self) -> str:
        return subject(self.topic)

    @cached_property
    def schema(self) -> dict[str, Any]:
        return json_schema(self.contract)

    @cached_property
    def text(self) -> str:
        return canonical(self.schema)


def topic_schemas(names: TopicNames, cases: Iterable[Any] | None = None) -> list[TopicSchema]:
    """The schema of every topic of ``cases`` (default: every registered use case) and of the loop's own topics,
    under ``names``. Raises ValueError when two contracts claim one topic."""
    from ml import use_cases
    from ml.publish import ModelEnvelope

    cases = use_cases.registered() if cases is None else cases
    pairs: list[tuple[str, type[BaseModel]]] = []
    for uc in cases:
        topics = uc.topics.resolved(names)
        pairs += [(topics.input, uc.input_contract), (topics.labels, uc.label_contract),
                  (topics.predictions, uc.prediction_contract), (topics.shadow, uc.prediction_contract),
                  (topics.dlq, DeadLetter)]
    pairs += [(names.models_topic, ModelEnvelope), (names.status_topic, ModelStatus)]
    found: dict[str, type[BaseModel]] = {}
    for topic, contract in pairs:
        if found.setdefault(topic, contract) is not contract:
            raise ValueError(f"topic {topic} has two contracts: {found[topic].__name__} and {contract.__name__}")
    return [TopicSchema(topic, contract) for topic, contract in found.items()]


# ---------------------------------------------------------------- compatibility, field by field

_JSON_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _types(prop: Mapping[str, Any]) -> set[str]:
    """The JSON types a property admits ("null" included when optional); empty = any."""
    if "type" in prop:
        kind = prop["type"]
        return set(kind) if isinstance(kind, list) else {kind}
    found: set[str] = set()
    for branch in prop.get("anyOf", prop.get("oneOf", [])):
        branch_types = _types(branch)
        if not branch_types:
            return set()
        found |= branch_types
    if "const" in prop and not found and type(prop["const"]) in _JSON_TYPE:
        found = {_JSON_TYPE[type(prop["const"])]}
    return found


def _widens(reader: set[str], writer: set[str]) -> bool:
    """True when every value of the writer's types is one of the reader's (an integer is a number)."""
    if not reader:
        return True
    return bool(writer) and all(t in reader or (t == "integer" and "number" in reader) for t in writer)


def read_problems(reader: Mapping[str, Any], writer: Mapping[str, Any]) -> list[str]:
    """Why records written with ``writer`` may not be valid under ``reader``, one line per field; [] = none."""
    r_props, w_props = reader.get("properties", {}), writer.get("properties", {})
    r_required, w_required = set(reader.get("required", [])), set(writer.get("required", []))
    closed = reader.get("additionalProperties", True) is False
    problems = []
    for name in w_props.keys() - r_props.keys():
        if closed:
            problems.append(f"field {name!r} was removed: records that carry it would be refused")
    for name in sorted(r_required - w_required):
        problems.append(f"field {name!r} is required, but records written before may lack it"
                        if name in w_props else f"field {name!r} was added as required: older records lack it")
    for name in sorted(r_props.keys() & w_props.keys()):
        r_types, w_types = _types(r_props[name]), _types(w_props[name])
        if not _widens(r_types, w_types):
            problems.append(f"field {name!r} changed type from {'|'.join(sorted(w_types)) or 'any'} to "
                            f"{'|'.join(sorted(r_types))}")
    return sorted(problems, key=lambda p: p.split("'")[1])


def incompatibilities(new: Mapping[str, Any], registered: list[Mapping[str, Any]], level: str) -> list[str]:
    """What breaks ``level`` (Confluent's names) if ``new`` follows the ``registered`` versions (oldest first).

    BACKWARD: the new schema reads records of the latest version; FORWARD: the latest reads the new one's;
    FULL: both; a _TRANSITIVE level checks every version, not only the latest; NONE checks nothing.
    """
    if level == "NONE" or not registered:
        return []
    against = registered if level.endswith("_TRANSITIVE") else registered[-1:]
    mode = level.removesuffix("_TRANSITIVE")
    problems: list[str] = []
    for old in against:
        if mode in ("BACKWARD", "FULL"):
            problems += read_problems(new, old)
        if mode in ("FORWARD", "FULL"):
            problems += [f"{p} (for consumers of the registered version)" for p in read_problems(old, new)]
    return list(dict.fromkeys(problems))
