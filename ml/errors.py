"""Domain errors of the retraining loop: raised by `ml/` functions, let fail by the tasks that call them."""


class LoopError(RuntimeError):
    """Base class of the loop's domain errors."""


class BrokerUnavailable(LoopError):
    """The Kafka cluster named by the bootstrap servers did not answer in time."""

    def __init__(self, bootstrap_servers: str, detail: object) -> None:
        self.bootstrap_servers = bootstrap_servers
        super().__init__(f"Kafka at {bootstrap_servers} is not reachable: {detail}")


class TopicMissing(LoopError):
    """A topic the operation needs does not exist on the cluster."""

    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        self.topic = topic
        super().__init__(f"topic {topic!r} does not exist on Kafka at {bootstrap_servers} "
                         f"(create it with `python -m ml topics`)")


class DeliveryFailed(LoopError):
    """Records were not acknowledged by the broker (delivery report error or flush timeout)."""


class AlreadySnapshotted(LoopError):
    """The records whose announcement started a run were read by another run's snapshot meanwhile (a scheduled
    or manual run ahead of it): nothing new to train on, the run is skipped."""


class InsufficientData(LoopError):
    """The snapshot has too few rows to validate or train on: the run is skipped, not failed."""

    def __init__(self, rows: int, minimum: int, report: object | None = None) -> None:
        self.rows = rows
        self.minimum = minimum
        self.report = report  # ml.validation.ValidationReport when the suite ran
        super().__init__(f"snapshot has {rows} rows, fewer than the minimum of {minimum}: skipping this run")


class ValidationFailed(LoopError):
    """The snapshot failed its data-quality suite; ``report`` (ml.validation.ValidationReport) holds every check."""

    def __init__(self, report) -> None:
        self.report = report
        super().__init__(report.failure_summary())


class RegistryUnavailable(LoopError):
    """The MLflow tracking server or database named by the tracking URI cannot be used."""


class EnvelopeRejected(LoopError):
    """A model envelope failed decoding, its schema, its signature or its artifact digest.

    ``kind`` names which (``undecodable``, ``schema``, ``signature``, ``untrusted_key``, ``revoked``, ``sha256``)
    for metrics and reports.
    """

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


class SigningKeyError(LoopError):
    """A model signing key, a trusted public key or the revocation list cannot be read or written (the message
    names the file or setting, never the key)."""


class ModelTooLarge(LoopError):
    """A model envelope exceeds the `models` topic's ``max.message.bytes``."""


class SchemaRegistryUnavailable(LoopError):
    """The schema registry at ``SCHEMA_REGISTRY_URL`` did not answer (records cannot be framed or resolved)."""

    def __init__(self, url: str, detail: object) -> None:
        self.url = url
        super().__init__(f"schema registry at {url} is not reachable: {detail} (start one with `make registry-up` "
                         "or point SCHEMA_REGISTRY_URL at yours)")


class SchemaNotRegistered(LoopError):
    """A producer's schema is not in the registry, and auto-registration is off."""

    def __init__(self, contract: str, subject: str, url: str) -> None:
        self.subject = subject
        super().__init__(f"{contract} is not registered under {subject} at {url} and SCHEMA_AUTO_REGISTER is off: "
                         "run `python -m ml schemas register`")


class SchemaIncompatible(LoopError):
    """A topic's schema in this code is not compatible with what the registry holds for its subject."""

    def __init__(self, subject: str, level: str, problems: list[str]) -> None:
        self.subject = subject
        self.problems = problems
        super().__init__(f"{subject}: not {level}-compatible with the registered schema: " + "; ".join(problems))
