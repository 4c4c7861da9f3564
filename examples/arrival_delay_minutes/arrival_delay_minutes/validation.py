"""The data-quality suite of a `flights.completed` snapshot as this use case needs it: most flights carry their
arrival delay (cancelled and diverted ones do not), the mean delay is plausible, there are enough rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ml.settings import LoopSettings
from ml.validation import Suite, ValidationPolicy
from use_cases.flight_delay.contracts import FlightCompleted

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

MIN_LABELLED = 0.9  # of the flights: the others were cancelled or diverted
MEAN_DELAY_MINUTES = (-30.0, 120.0)


def domain_expectations(settings: LoopSettings, policy: ValidationPolicy,
                        reference: pd.DataFrame | None) -> list[Expectation]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="arr_delay", mostly=MIN_LABELLED),
        gxe.ExpectColumnMeanToBeBetween(column="arr_delay", min_value=MEAN_DELAY_MINUTES[0],
                                        max_value=MEAN_DELAY_MINUTES[1]),
        gxe.ExpectTableRowCountToBeBetween(min_value=settings.min_training_rows),
    ]


SUITE = Suite("flights.completed", FlightCompleted, domain_expectations,
              numeric_drift=("distance", "temp", "visib", "arr_delay"), categorical_drift=("carrier", "dest"))
