"""Every producer of the loop and the scorer waits for all in-sync replicas (acks=all): on a replicated cluster
(min.insync.replicas 2 of 3) a record acknowledged is on two brokers at least, so one broker may fail with nothing
lost. Checked in the source, since each producer is configured where it is made."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scoring_service.config import ScorerSettings
from scoring_service.sink import producer_config

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ml", "scoring_service", "use_cases")


def producer_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Producer":
                    calls.append((f"{path.relative_to(REPO)}:{node.lineno}", node))
    return calls


def literal_settings(call: ast.Call) -> dict | None:
    """The dict literal a Producer(...) is given, directly or through settings.kafka_config({...}); None otherwise."""
    arg = call.args[0] if call.args else None
    if isinstance(arg, ast.Call) and getattr(arg.func, "attr", None) == "kafka_config" and arg.args:
        arg = arg.args[0]
    if not isinstance(arg, ast.Dict):
        return None
    return {k.value: v for k, v in zip(arg.keys, arg.values, strict=True) if isinstance(k, ast.Constant)}


def test_the_source_has_producers_to_check():
    assert len(producer_calls()) >= 4


@pytest.mark.parametrize(("where", "call"), producer_calls(), ids=[w for w, _ in producer_calls()])
def test_every_producer_asks_for_acks_all(where, call):
    settings = literal_settings(call)
    if settings is None:  # configured by a function: the scorer's sink, checked below
        assert ast.unparse(call.args[0]).startswith("producer_config("), where
        return
    assert "acks" in settings and ast.literal_eval(settings["acks"]) == "all", where


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_the_scorers_sink_asks_for_acks_all_in_both_modes(mode):
    assert producer_config(ScorerSettings(use_case="flight_delay", delivery_mode=mode))["acks"] == "all"
