"""The use-case interface and registry, and the layout it leaves: every registered use case is consistent, the
registry imports only what it is asked for, no shared module names a use case, and no layer imports one above
it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml import use_cases
from ml.contracts import ScoredEvent
from ml.use_cases import ENTRY_POINT_GROUP, UnknownUseCase, UseCase

REPO = Path(__file__).resolve().parents[2]
# The shared code: the generic loop, the scorer, the Airflow wiring and UI, the local launchers. The demo
# (infra/demo) is the flight delay use case's demo and names it on purpose.
SHARED = ("ml", "scoring_service", "dags", "plugins", "infra")
NOT_SHARED = ("infra/demo",)


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py")
                  if not any(p.is_relative_to(REPO / other) for other in NOT_SHARED))


def imported(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


# ---------------------------------------------------------------- the registry


def test_the_built_in_use_cases_are_registered_under_the_entry_point_group():
    assert {"flight_delay", "sensor_anomaly"} <= set(use_cases.names())
    assert ENTRY_POINT_GROUP == "kafka_retrain_loop.use_cases"
    uc = use_cases.get("flight_delay")
    assert isinstance(uc, UseCase) and uc.name == "flight_delay"
    assert use_cases.use_case_class("sensor_anomaly").topics.labels == "sensors.readings"


def test_an_unknown_name_is_refused_naming_the_registered_ones():
    with pytest.raises(UnknownUseCase, match=r"unknown use case 'churn'; registered: \[.*'flight_delay'"):
        use_cases.get("churn")
    from ml.settings import LoopSettings

    with pytest.raises(ValueError, match="unknown use case 'churn'"):
        LoopSettings(use_case="churn")
    with pytest.raises(UnknownUseCase, match="no use case selected"):
        use_cases.selected(LoopSettings())


def test_listing_the_use_cases_imports_none_of_them_and_getting_one_imports_only_that_one():
    code = ("import sys; from ml import use_cases; names = use_cases.names(); "
            "assert not [m for m in sys.modules if m.startswith('use_cases.')], 'listed by importing'; "
            "use_cases.get('sensor_anomaly'); "
            "assert 'use_cases.sensor_anomaly.use_case' in sys.modules; "
            "assert 'use_cases.flight_delay' not in sys.modules, 'another use case was imported'; "
            "assert 'tensorflow' not in sys.modules and 'great_expectations' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------- each registered use case


@pytest.mark.parametrize("name", use_cases.names())
def test_each_registered_use_case_is_consistent(name):
    uc = use_cases.get(name)
    assert use_cases.problems(uc) == []
    assert issubclass(uc.prediction_contract, ScoredEvent)
    assert set(uc.ui_metrics) and {c.metric for c in uc.gate}


def test_problems_name_what_is_inconsistent():
    from use_cases.flight_delay.use_case import FlightDelay

    class Broken(FlightDelay):
        name = "broken"
        label = "late"
        time_order = ("flight_id",)
        gate = ()
        scores = UseCase.scores  # its metric functions would have nothing to read

    found = use_cases.problems(Broken())
    assert any("metric_functions without scores" in p for p in found)
    assert any("label 'late' is not a field of FlightCompleted" in p for p in found)
    assert any("'flight_id', which is not a timestamp" in p for p in found)
    assert any("use_case must be Literal['broken']" in p for p in found)
    assert any("nothing would ever be promoted" in p for p in found)


def test_a_use_cases_own_settings_come_from_its_prefixed_variables(monkeypatch):
    monkeypatch.setenv("FLIGHT_DELAY_DECISION_THRESHOLD", "0.3")
    monkeypatch.setenv("DECISION_THRESHOLD", "0.9")  # unprefixed: not this use case's
    monkeypatch.setenv("FLIGHT_DELAY_GATE_MARGINS", '{"roc_auc": 0.05}')
    uc = use_cases.get("flight_delay")
    assert uc.settings.decision_threshold == 0.3
    assert {c.metric: c.margin for c in uc.gate_criteria()} == {"roc_auc": 0.05, "log_loss": 0.02}
    monkeypatch.setenv("FLIGHT_DELAY_GATE_MARGINS", '{"auc": 0.05}')
    assert any("gate overrides name metrics ['auc']" in p for p in use_cases.problems(use_cases.get("flight_delay")))


def test_the_cli_lists_each_use_case_and_fails_on_a_problem(monkeypatch):
    ok = subprocess.run([sys.executable, "-m", "ml", "use-cases"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "flight_delay:" in ok.stdout and "sensors.readings" in ok.stdout
    env = {**os.environ, "SENSOR_ANOMALY_GATE_FLOORS": '{"roc_auc": 0.9}'}
    bad = subprocess.run([sys.executable, "-m", "ml", "use-cases"], capture_output=True, text=True, cwd=REPO, env=env)
    assert bad.returncode == 1 and "problem: gate overrides name metrics ['roc_auc']" in bad.stdout


# ---------------------------------------------------------------- the layout


def forbidden_names() -> dict[str, str]:
    """Text that names a registered use case -> which one: its name (also upper case, as in its variables),
    its package, its topics' default names and the names of its classes."""
    names: dict[str, str] = {}
    for uc in use_cases.registered():
        cls = type(uc)
        words = {uc.name, uc.name.upper(), cls.__module__.rsplit(".", 1)[0], *uc.topics.distinct(),
                 cls.__name__, uc.input_contract.__name__, uc.label_contract.__name__,
                 uc.prediction_contract.__name__, uc.preprocessing.__name__}
        names |= dict.fromkeys(words, uc.name)
    return names


def test_no_shared_module_names_a_use_case():
    words = forbidden_names()
    named = {f"{path.relative_to(REPO)}: {word} ({uc})" for path in python_files(*SHARED)
             for word, uc in words.items() if word in path.read_text()}
    assert named == set()


def test_the_naming_check_finds_the_names_where_they_are_used():
    # The check above can fail: the same search finds the names where a use case's own code uses them.
    words = forbidden_names()
    own = (REPO / "use_cases" / "flight_delay" / "replay.py").read_text()
    assert {uc for word, uc in words.items() if word in own} == {"flight_delay"}


@pytest.mark.parametrize("layer, may_not_import", [
    (("ml",), ("use_cases", "scoring_service", "infra", "plugins", "dags")),
    (("use_cases",), ("scoring_service", "infra", "airflow", "plugins", "dags")),
    (("scoring_service",), ("use_cases", "infra", "airflow", "plugins", "dags")),
    (("dags", "plugins"), ("use_cases", "scoring_service", "infra")),
])
def test_no_layer_imports_one_above_it_or_a_use_case_by_name(layer, may_not_import):
    offending = {f"{path.relative_to(REPO)} imports {module}" for path in python_files(*layer)
                 for module in imported(path) if module.split(".")[0] in may_not_import}
    assert offending == set()


def test_only_the_dag_factory_and_its_trigger_import_airflow():
    importers = {str(path.relative_to(REPO)) for path in python_files("ml")
                 if any(m.split(".")[0] == "airflow" for m in imported(path))}
    assert importers == {"ml/airflow_dag.py", "ml/airflow_trigger.py"}
