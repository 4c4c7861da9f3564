"""The data-quality engine of training snapshots: a Great Expectations suite, drift and Data Docs.

A use case's ``Suite`` names the contract of its labels topic and adds the checks the contract cannot express.
The engine derives from the contract one column per field with its type, non-null when the field is not
optional, ranges and lengths from the pydantic ``Field`` constraints and the value set of ``Literal`` fields,
then runs the use case's checks beside them. Two checks are computed here rather than by GX because their
inputs are not columns of the snapshot: the rate of records the snapshot rejected (a count passed in) and,
when configured to fail, feature drift.

Drift (PSI against the champion's training data) is always computed and recorded; above the alert threshold it
adds a warning, and fails the validation only when ``ValidationPolicy.fail_on_drift`` is set.

Great Expectations is imported inside the functions: it takes seconds to import.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import orjson
import pandas as pd
from pydantic import AwareDatetime, BaseModel, Field, model_validator

from ml import contracts, data_docs_assets
from ml.errors import InsufficientData, ValidationFailed
from ml.settings import LoopSettings

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

log = logging.getLogger(__name__)
# Great Expectations logs its own start-up at INFO, about 200 lines a process ("Skipping registering function",
# metrics declared twice, its temporary docs folder), which buried each validation's own lines in a task's log.
# Its warnings and errors still show.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

# Snapshots up to this many rows are validated in one piece, larger ones in batches of it; drift reads about
# DRIFT_SAMPLE_ROWS rows of each side at most.
VALIDATION_BATCH_ROWS = 500_000
DRIFT_SAMPLE_ROWS = 1_000_000
DOCS_SITE = "run_data_docs"  # not `local_site`: an ephemeral context already holds that name
REPORT_FILE = "validation_report.json"

# pandas dtype names that GX's ExpectColumnValuesToBeOfType matches for each contract type: "int64" also
# matches the nullable Int64, "str" both the pandas 3 string dtype and object columns of str, and "Timestamp"
# tz-aware datetimes of any unit.
_GX_TYPE_NAMES: dict[type, str] = {int: "int64", float: "float64", bool: "bool", str: "str", datetime: "Timestamp"}


class ValidationPolicy(BaseModel):
    """Thresholds of the checks that the topic contract does not define."""

    label_rate_min: float = Field(0.05, ge=0, le=1)
    label_rate_max: float = Field(0.70, ge=0, le=1)
    max_rejected_rate: float = Field(0.01, ge=0, le=1)
    psi_alert: float = Field(0.2, gt=0)
    fail_on_drift: bool = False
    psi_bins: int = Field(10, ge=2)

    @model_validator(mode="after")
    def _band(self) -> ValidationPolicy:
        if self.label_rate_min > self.label_rate_max:
            raise ValueError("label_rate_min must not exceed label_rate_max")
        return self


class CheckResult(BaseModel):
    """One expectation and its outcome; ``unexpected_*`` are set for row-level checks."""

    expectation: str
    column: str | None = None
    kwargs: dict[str, Any] = {}
    success: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed_value: Any = None
    exception: str | None = None

    def describe(self) -> str:
        where = f"{self.expectation}({self.column})" if self.column else self.expectation
        if self.exception:
            return f"{where} raised: {self.exception}"
        if self.unexpected_count is not None:
            return f"{where} failed on {self.unexpected_count} rows ({self.unexpected_percent or 0:.2f}%)"
        return f"{where} failed: observed {self.observed_value!r}, expected {self.kwargs}"


class ValidationReport(BaseModel):
    """The outcome of one snapshot validation, written as JSON beside its Data Docs."""

    run_id: str
    success: bool
    rows: int
    rejected: int
    rejected_rate: float
    results: list[CheckResult]
    drift: dict[str, float]
    reference_rows: int | None
    warnings: list[str]
    data_docs_path: str | None
    report_path: str | None
    validated_at: AwareDatetime
    duration_s: float

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]

    def failure_summary(self) -> str:
        failed = self.failures()
        lines = "; ".join(r.describe() for r in failed)
        return (f"snapshot validation of run {self.run_id} failed {len(failed)} of {len(self.results)} checks "
                f"({self.rows} rows): {lines}. Data Docs: {self.data_docs_path}")


# ---------------------------------------------------------------- suite derived from the contract


def contract_expectations(contract: type[BaseModel]) -> list[Expectation]:
    """Column existence, type, non-null, value range, string length and literal value set per contract field."""
    import great_expectations.expectations as gxe

    out: list[Expectation] = []
    for f in contracts.field_specs(contract):
        out.append(gxe.ExpectColumnToExist(column=f.name))
        out.append(gxe.ExpectColumnValuesToBeOfType(column=f.name, type_=_GX_TYPE_NAMES[f.base]))
        if not f.nullable:
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=f.name))
        if f.literals:
            out.append(gxe.ExpectColumnValuesToBeInSet(column=f.name, value_set=list(f.literals)))
        bounds: dict[str, Any] = {}
        if f.ge is not None or f.gt is not None:
            bounds |= dict(min_value=f.gt if f.ge is None else f.ge, strict_min=f.ge is None)
        if f.le is not None or f.lt is not None:
            bounds |= dict(max_value=f.lt if f.le is None else f.le, strict_max=f.le is None)
        if bounds:
            out.append(gxe.ExpectColumnValuesToBeBetween(column=f.name, **bounds))
        if f.min_len is not None or f.max_len is not None:
            lengths = {k: v for k, v in (("min_value", f.min_len), ("max_value", f.max_len)) if v is not None}
            out.append(gxe.ExpectColumnValueLengthsToBeBetween(column=f.name, **lengths))
    return out


# ---------------------------------------------------------------- rows


@runtime_checkable
class RowSource(Protocol):
    """A snapshot's rows without holding them: their count and column names, batches of them, or some columns of
    all of them (``ml.snapshot.SnapshotRows`` reads them from Parquet)."""

    count: int
    column_names: list[str]

    def batches(self, size: int) -> Iterator[pd.DataFrame]: ...

    def columns(self, names: list[str] | None) -> pd.DataFrame: ...


class FrameRows:
    """The rows of a DataFrame as a RowSource."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df, self.count, self.column_names = df, len(df), list(df.columns)

    def batches(self, size: int) -> Iterator[pd.DataFrame]:
        for a in range(0, self.count, size):
            yield self.df.iloc[a:a + size]

    def columns(self, names: list[str] | None) -> pd.DataFrame:
        return self.df if names is None else self.df[[n for n in names if n in self.df.columns]]


def sample(df: pd.DataFrame | None, n: int, seed: int) -> pd.DataFrame | None:
    """At most ``n`` rows of ``df``, drawn without replacement from ``seed`` (all of them, in order, when fewer)."""
    return df if df is None or len(df) <= n else df.sample(n=n, random_state=seed).sort_index()


# ---------------------------------------------------------------- drift


def _psi(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    # An empty bin on either side would make the log infinite: floor both shares at eps.
    p, q = np.clip(expected, eps, None), np.clip(actual, eps, None)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_numeric(reference: pd.Series, current: pd.Series, bins: int = 10) -> float:
    """PSI over the reference's quantile bins, with missing values as a bin of their own."""
    ref = pd.to_numeric(reference, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    cur = pd.to_numeric(current, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    finite = ref[~np.isnan(ref)]
    inner = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.unique(np.quantile(finite, inner)) if finite.size else np.array([])

    def shares(x: np.ndarray) -> np.ndarray:
        idx = np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, x, side="right"))
        return np.bincount(idx, minlength=len(edges) + 2) / max(len(x), 1)

    return _psi(shares(ref), shares(cur))


def psi_categorical(reference: pd.Series, current: pd.Series) -> float:
    """PSI over the union of categories seen on either side, missing values as a category."""
    ref = reference.astype(object).where(reference.notna(), "<missing>").value_counts(normalize=True)
    cur = current.astype(object).where(current.notna(), "<missing>").value_counts(normalize=True)
    cats = ref.index.union(cur.index)
    return _psi(ref.reindex(cats, fill_value=0).to_numpy(), cur.reindex(cats, fill_value=0).to_numpy())


def drift(df: pd.DataFrame, reference: pd.DataFrame, bins: int = 10, *, numeric: tuple[str, ...] = (),
          categorical: tuple[str, ...] = (),
          derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> dict[str, float]:
    """PSI of each drift feature present in both frames (after ``derive`` added derived columns to each),
    rounded to 6 decimals."""
    cur, ref = (derive(df), derive(reference)) if derive else (df, reference)
    out: dict[str, float] = {}
    for name in numeric:
        if name in cur and name in ref:
            out[name] = round(psi_numeric(ref[name], cur[name], bins), 6)
    for name in categorical:
        if name in cur and name in ref:
            out[name] = round(psi_categorical(ref[name], cur[name]), 6)
    return out


# ---------------------------------------------------------------- suites of the use cases


@dataclass(frozen=True)
class Suite:
    """What one use case validates: the snapshot's contract, the checks it cannot express (``domain``: from
    the settings, the policy and the champion's training rows, if any), and the drift features (``derive``
    adds derived ones to a frame)."""

    name: str  # the labels topic's default name: names the GX asset and suite
    contract: type[BaseModel]
    domain: Callable[[LoopSettings, ValidationPolicy, pd.DataFrame | None], list[Expectation]]
    policy: ValidationPolicy = field(default_factory=ValidationPolicy)
    numeric_drift: tuple[str, ...] = ()
    categorical_drift: tuple[str, ...] = ()
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    # Every column ``domain`` and the drift (with ``derive``'s inputs) read: only they are loaded, from the champion's
    # training rows and, for drift, from a snapshot validated in batches. None: all columns.
    reference_columns: tuple[str, ...] | None = None


# ---------------------------------------------------------------- run


def _jsonable(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str))


def _check_result(r: Any) -> CheckResult:
    cfg, res, exc = r.expectation_config, r.result or {}, r.exception_info or {}
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("column", "batch_id")}
    return CheckResult(
        expectation=cfg.type, column=cfg.kwargs.get("column"), kwargs=_jsonable(kwargs), success=bool(r.success),
        unexpected_count=res.get("unexpected_count"), unexpected_percent=res.get("unexpected_percent"),
        observed_value=_jsonable(res.get("observed_value")),
        exception=exc.get("exception_message") if exc.get("raised_exception") else None,
    )


def _safe_name(run_id: str) -> str:
    # Airflow run ids carry ':' and '+'; keep the folder name portable and free of path separators.
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id).strip(".") or "run"


class _GxRun:
    """One ephemeral GX context whose Data Docs under ``docs_dir`` list every validation run in it."""

    def __init__(self, docs_dir: Path, name: str) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        # This module sets its own logger to INFO when imported; unset, it follows "great_expectations" (above).
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.NOTSET)
        self.gx, self.name = gx, name
        self.ctx = gx.get_context(mode="ephemeral")
        # Progress bars would fill task logs with a line per metric batch.
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.ctx.add_data_docs_site(DOCS_SITE, {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        self.source = self.ctx.data_sources.add_pandas("snapshot")
        self.checkpoints: dict[str, Any] = {}

    def run(self, part: str, df: pd.DataFrame, expectations: list[Expectation], run_name: str) -> list[Any]:
        """The GX results of ``expectations`` (suite ``<name>.<part>``, created on first use) on ``df``."""
        from great_expectations.checkpoint import UpdateDataDocsAction

        gx = self.gx
        if part not in self.checkpoints:
            batch = (self.source.add_dataframe_asset(f"{self.name}{part}")
                     .add_batch_definition_whole_dataframe("whole_snapshot"))
            suite = self.ctx.suites.add(gx.ExpectationSuite(name=f"{self.name}{part}.v1",
                                                            expectations=expectations))
            definition = self.ctx.validation_definitions.add(gx.ValidationDefinition(
                name=f"snapshot{part}", data=batch, suite=suite))
            self.checkpoints[part] = self.ctx.checkpoints.add(gx.Checkpoint(
                name=f"snapshot_checkpoint{part}", validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
                # BASIC: counts, shares and a sample of the unexpected values (the pages list them); SUMMARY's
                # count per value and row indices took GX a third of a year's validation (docs/performance.md).
                result_format={"result_format": "BASIC"},
            ))
        outcome = self.checkpoints[part].run(batch_parameters={"dataframe": _plain_integers(df)},
                                             run_id=gx.RunIdentifier(run_name=run_name))
        (validation,) = outcome.run_results.values()
        return list(validation.results)


def _plain_integers(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each nullable integer column that holds no null as its numpy type (not copied, copy on write):
    GX compares numpy numbers vectorised but a pandas ``Int64`` column value by value in Python (a range check took
    half a second a column on a year of flights, docs/performance.md). The same values and type name, so the same
    verdicts; a column with nulls stays as it is."""
    plain = {name: column.to_numpy(column.dtype.numpy_dtype) for name, column in df.items()
             if isinstance(column.dtype, pd.api.extensions.ExtensionDtype) and column.dtype.kind in "iu"
             and not column.hasnans}
    return df.assign(**plain) if plain else df


def _run_suite(df: pd.DataFrame, expectations: list[Expectation], run_id: str, docs_dir: Path,
               name: str) -> list[CheckResult]:
    """Validate ``df`` in an ephemeral GX context and write its Data Docs to ``docs_dir``."""
    return _in_order(expectations, [_check_result(r) for r in _GxRun(docs_dir, name).run("", df, expectations,
                                                                                            run_id)])


def _key(kind: str, kwargs: dict[str, Any]) -> str:
    return kind + orjson.dumps(_jsonable({k: v for k, v in kwargs.items() if k != "batch_id"}),
                               option=orjson.OPT_SORT_KEYS).decode()


def _in_order(expectations: list[Expectation], results: list[CheckResult]) -> list[CheckResult]:
    """``results`` in the order of ``expectations`` (GX returns them in an order of its own)."""
    position = {_key(e.expectation_type, e.configuration.kwargs): i for i, e in enumerate(expectations)}
    return sorted(results, key=lambda r: position.get(_key(r.expectation, {**r.kwargs, "column": r.column}
                                                           if r.column else r.kwargs), len(position)))


def _per_row(expectation: Expectation) -> bool:
    """A check of each row on its own, or of the columns' presence and type (the same in every batch): run batch
    by batch and merged. The others (a mean, a row count) read all rows at once."""
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )

    return isinstance(expectation, ColumnMapExpectation | ColumnPairMapExpectation | MulticolumnMapExpectation) \
        or expectation.expectation_type in _SCHEMA_CHECKS


# Results that depend on the columns' names and dtypes only, identical in every batch of one snapshot.
_SCHEMA_CHECKS = frozenset({"expect_column_to_exist", "expect_column_values_to_be_of_type",
                            "expect_column_values_to_be_in_type_list", "expect_table_columns_to_match_set",
                            "expect_table_columns_to_match_ordered_list", "expect_table_column_count_to_equal"})


def _merged(batches: list[list[Any]]) -> list[CheckResult]:
    """One result per expectation from its results on every batch: counts of unexpected rows summed (``mostly``
    applied to the sums, as GX applies it to one batch); otherwise it holds when it held on every batch."""
    by_key: dict[str, list[Any]] = {}
    for results in batches:
        for r in results:
            by_key.setdefault(_key(r.expectation_config.type, r.expectation_config.kwargs), []).append(r)
    out = []
    for group in by_key.values():
        first = _check_result(group[0])
        counted = [r.result or {} for r in group]
        if all("unexpected_count" in c for c in counted):
            unexpected = sum(c["unexpected_count"] for c in counted)
            checked = sum(c.get("element_count", 0) - (c.get("missing_count") or 0) for c in counted)
            mostly = group[0].expectation_config.kwargs.get("mostly")
            share = unexpected / checked if checked else 0.0
            success = all(r.success for r in group) if mostly is None else (1 - share >= mostly)
            out.append(first.model_copy(update={"success": success, "unexpected_count": unexpected,
                                                "unexpected_percent": 100 * share}))
        else:
            failed = next((_check_result(r) for r in group if not r.success), None)
            out.append(failed or first)
    return out


def _run_suite_in_batches(rows: RowSource, expectations: list[Expectation], run_id: str, docs_dir: Path,
                          name: str, batch_rows: int, seen: Callable[[pd.DataFrame], None]) -> list[CheckResult]:
    """The suite's verdicts on all of ``rows`` with at most ``batch_rows`` rows in memory at once (plus the columns
    of the whole-snapshot checks): each batch is one run in the Data Docs, and is passed to ``seen``."""
    per_row = [e for e in expectations if _per_row(e)]
    whole = [e for e in expectations if not _per_row(e)]
    gx_run = _GxRun(docs_dir, name)
    batches = []
    for i, batch in enumerate(rows.batches(batch_rows)):
        batches.append(gx_run.run(".rows", batch, per_row, f"{run_id} rows {i * batch_rows}-"
                                                           f"{i * batch_rows + len(batch) - 1}"))
        seen(batch)
    results = _merged(batches) if batches else []
    if whole:
        columns = sorted({e.configuration.kwargs["column"] for e in whole if "column" in e.configuration.kwargs})
        frame = rows.columns(columns or rows.column_names[:1])
        results += [_check_result(r) for r in gx_run.run(".all_rows", frame, whole, f"{run_id} all rows")]
    log.info("run %s: %d checks on %d rows in %d batches of up to %d, %d on the whole snapshot's columns",
             run_id, len(per_row), rows.count, len(batches), batch_rows, len(whole))
    return _in_order(expectations, results)


def validate_snapshot(snapshot: pd.DataFrame | RowSource, settings: LoopSettings, *, run_id: str, suite: Suite,
                      reference: pd.DataFrame | None = None, rejected: int = 0,
                      policy: ValidationPolicy | None = None,
                      batch_rows: int = VALIDATION_BATCH_ROWS) -> ValidationReport:
    """Validate a snapshot (its rows, or a source of them) with ``suite``; write Data Docs and the report JSON
    under ``settings.reports_dir / "data_docs" / <run_id>``.

    Up to ``batch_rows`` rows are validated at once; a larger snapshot in batches with the same verdicts
    (``_run_suite_in_batches``), and its drift on a sample of about ``DRIFT_SAMPLE_ROWS`` rows of each side.

    ``reference`` is the champion's training data (None for the first model): the use case's checks may read
    it, and it is the baseline of drift. ``rejected`` is the number of records the snapshot dropped as
    invalid.
    Raises ``InsufficientData`` when ``df`` has fewer than ``settings.min_training_rows`` rows (the run should
    be skipped) and ``ValidationFailed`` when any check fails; both carry the report when one was made.
    """
    policy = policy or suite.policy
    source = snapshot if isinstance(snapshot, RowSource) else FrameRows(snapshot)
    rows = source.count
    if rows == 0:
        log.warning("run %s: empty snapshot, nothing to validate", run_id)
        raise InsufficientData(0, settings.min_training_rows)
    started = time.perf_counter()
    docs_dir = (settings.reports_dir / "data_docs" / _safe_name(run_id)).resolve()
    docs_dir.mkdir(parents=True, exist_ok=True)

    expectations = contract_expectations(suite.contract) + suite.domain(settings, policy, reference)
    if rows <= batch_rows:
        df = source.columns(None)
        results = _run_suite(df, expectations, run_id, docs_dir, suite.name)
    else:  # the drift's rows: a share of each batch, about DRIFT_SAMPLE_ROWS in all
        kept: list[pd.DataFrame] = []
        share, draw = DRIFT_SAMPLE_ROWS / rows, np.random.default_rng(settings.seed)

        def keep(batch: pd.DataFrame) -> None:
            if reference is not None:
                columns = batch if suite.reference_columns is None else batch[list(suite.reference_columns)]
                kept.append(columns[draw.random(len(columns)) < share])

        results = _run_suite_in_batches(source, expectations, run_id, docs_dir, suite.name, batch_rows, keep)
        df = pd.concat(kept) if kept else None

    rejected_rate = rejected / (rows + rejected)
    results.append(CheckResult(
        expectation="rejected_record_rate_to_be_at_most", kwargs={"max_value": policy.max_rejected_rate},
        success=rejected_rate <= policy.max_rejected_rate, unexpected_count=rejected,
        unexpected_percent=round(100 * rejected_rate, 6), observed_value=rejected_rate,
    ))

    warnings: list[str] = []
    psi = (drift(sample(df, DRIFT_SAMPLE_ROWS, settings.seed), sample(reference, DRIFT_SAMPLE_ROWS, settings.seed),
                 policy.psi_bins, numeric=suite.numeric_drift, categorical=suite.categorical_drift,
                 derive=suite.derive) if reference is not None else {})
    del df
    for feature, value in psi.items():
        if value > policy.psi_alert:
            warnings.append(f"drift: PSI of {feature} is {value:.3f} (alert above {policy.psi_alert})")
        if policy.fail_on_drift:
            results.append(CheckResult(expectation="feature_psi_to_be_at_most", column=feature,
                                       kwargs={"max_value": policy.psi_alert},
                                       success=value <= policy.psi_alert, observed_value=value))

    report = ValidationReport(
        run_id=run_id, success=all(r.success for r in results), rows=rows, rejected=rejected,
        rejected_rate=rejected_rate, results=results, drift=psi,
        reference_rows=None if reference is None else len(reference), warnings=warnings,
        data_docs_path=str(docs_dir / "index.html"), report_path=str(docs_dir / REPORT_FILE),
        validated_at=datetime.now(UTC), duration_s=round(time.perf_counter() - started, 3),
    )
    (docs_dir / REPORT_FILE).write_bytes(orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    data_docs_assets.localise(docs_dir, settings.data_docs_assets_dir)
    for w in warnings:
        log.warning("run %s: %s", run_id, w)
    log.info("run %s: validated %d rows (%d rejected) in %.2f s: %d/%d checks passed, max PSI %s; docs %s",
             run_id, rows, rejected, report.duration_s, sum(r.success for r in results), len(results),
             max(psi.values(), default=None), report.data_docs_path)

    if rows < settings.min_training_rows:
        raise InsufficientData(rows, settings.min_training_rows, report)
    if not report.success:
        raise ValidationFailed(report)
    return report
