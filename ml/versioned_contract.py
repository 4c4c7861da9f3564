"""What every feature contract shares: JSON round-trip, a content fingerprint, and refusal of another version.

A feature contract travels with its model (MLflow, the envelope); code that reads it must be the code that
fitted it, so ``from_dict`` refuses a contract whose ``contract_version`` is not the class's ``VERSION``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict


class VersionedContract(BaseModel):
    """Base of the use cases' feature contracts; subclasses set ``VERSION`` and ``LABEL``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    VERSION: ClassVar[int]
    LABEL: ClassVar[str]

    contract_version: int

    @property
    def fingerprint(self) -> str:
        """Short content hash, for logs and registry tags."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a contract; raises ValueError when it was fitted by another contract version."""
        contract = cls.model_validate(dict(data))
        if contract.contract_version != cls.VERSION:
            raise ValueError(f"{cls.LABEL} v{contract.contract_version} cannot be used by features v{cls.VERSION}")
        return contract
