"""docs/contracts.md tells people what the contracts say: each documented table lists the contract's fields in
order, with their nullability, and the example records are valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ml.contracts import DeadLetter, ModelStatus, field_specs
from use_cases.flight_delay.contracts import FlightCompleted, FlightPrediction, FlightScheduled
from use_cases.sensor_anomaly.contracts import SensorReading

DOC = (Path(__file__).resolve().parents[2] / "docs" / "contracts.md").read_text()


def table_after(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after ``heading``."""
    section = DOC[DOC.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # header and rule


@pytest.mark.parametrize("contract, heading, inherited", [
    (FlightScheduled, "### FlightScheduled", 0),
    (FlightCompleted, "### FlightCompleted", len(FlightScheduled.model_fields)),
    (FlightPrediction, "### FlightPrediction", 0),
    (DeadLetter, "### DeadLetter", 0),
    (ModelStatus, "### ModelStatus", 0),
    (SensorReading, "**SensorReading v1**", 0),
])
def test_each_documented_table_lists_the_contracts_fields_in_order(contract, heading, inherited):
    rows = [r for r in table_after(heading) if not r[0].startswith("*")]
    fields = [f for f in field_specs(contract)][inherited:]
    assert [r[0].strip("`") for r in rows] == [f.name for f in fields]
    if len(rows[0]) == 4:  # field | type | null | rule
        assert [r[2] == "yes" for r in rows] == [f.nullable for f in fields]


@pytest.mark.parametrize("contract, heading", [(FlightCompleted, "### Example (`flights.completed`"),
                                               (SensorReading, "Example (`sensors.readings`")])
def test_the_examples_satisfy_their_contracts(contract, heading):
    block = re.search(r"```json\n(.*?)```", DOC[DOC.index(heading):], re.S).group(1)
    contract.model_validate_json(json.dumps(json.loads(block)), strict=True)
