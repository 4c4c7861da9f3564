"""The data-quality suite of a `sensors.readings` snapshot (run by ``ml.validation.validate_snapshot``).

The contract gives types, nulls and the measuring ranges; on top, a training snapshot must carry its labels
(a live, unlabelled reading is valid on the topic but useless to train and gate on), its anomaly rate must be
plausible, and it must hold enough readings. Drift is computed on the channels and the machine mix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ml.settings import LoopSettings
from ml.validation import Suite, ValidationPolicy
from use_cases.sensor_anomaly.contracts import CHANNELS, SensorReading

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

# Injected anomalies are rare: a labelled share outside this band means a broken labeller or replay.
POLICY = ValidationPolicy(label_rate_min=0.001, label_rate_max=0.2)


def domain_expectations(settings: LoopSettings, policy: ValidationPolicy,
                        reference: pd.DataFrame | None) -> list[Expectation]:
    """Labels present, anomaly rate within the policy's band, minimum rows."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="is_anomaly"),
        gxe.ExpectColumnValuesToNotBeNull(column="anomaly_kind"),
        gxe.ExpectColumnMeanToBeBetween(column="is_anomaly", min_value=policy.label_rate_min,
                                        max_value=policy.label_rate_max),
        gxe.ExpectTableRowCountToBeBetween(min_value=settings.min_training_rows),
    ]


SUITE = Suite("sensors.readings", SensorReading, domain_expectations, policy=POLICY,
              numeric_drift=CHANNELS, categorical_drift=("machine_id",))
