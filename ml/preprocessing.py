"""The fitted preprocessing of a model: what every use case's shares, and the check that it can read a topic.

A preprocessing is fitted on training rows (vocabularies, normalisation statistics, a threshold...) and travels
with its model (MLflow, the signed envelope), so a model is always scored as it was trained. Code that reads one
must be the code that fitted it: ``from_dict`` refuses another use case's or another ``VERSION``'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from ml.contracts import field_types


class Preprocessing(BaseModel):
    """Base of the use cases' fitted preprocessing; subclasses fix ``use_case`` (a Literal) and ``VERSION``.

    ``input_schema`` maps each input field the preprocessing reads to its Arrow type ("?" when optional), so a
    scorer can tell whether it fits the topic it reads before it serves.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    VERSION: ClassVar[int]

    use_case: str
    version: int
    input_schema: dict[str, str]
    rows_fitted: int
    fitted_through: str  # the latest event time of the rows it was fitted on (ISO 8601)

    @property
    def fingerprint(self) -> str:
        """Short content hash, for logs and registry tags."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a fitted preprocessing; raises ValueError (pydantic's ValidationError is one) when it is
        another use case's or was fitted by another ``VERSION`` of the code."""
        preprocessing = cls.model_validate(dict(data))
        if preprocessing.version != cls.VERSION:
            raise ValueError(f"{cls.__name__} v{preprocessing.version} cannot be read by the code of "
                             f"v{cls.VERSION}")
        return preprocessing


def schema_problems(preprocessing: Preprocessing, contract: type[BaseModel]) -> list[str]:
    """Why ``preprocessing`` cannot read records of ``contract``: a field it reads is missing, has another
    type, or is optional where it needs it; empty when it can."""
    topic = field_types(contract)
    problems = []
    for name, wanted in preprocessing.input_schema.items():
        have = topic.get(name)
        if have is None:
            problems.append(f"{name}: not a field of {contract.__name__}")
        elif wanted.rstrip("?") != have.rstrip("?"):
            problems.append(f"{name}: the preprocessing reads {wanted.rstrip('?')}, the topic has {have.rstrip('?')}")
        elif not wanted.endswith("?") and have.endswith("?"):
            problems.append(f"{name}: the preprocessing requires it, the topic makes it optional")
    return problems
