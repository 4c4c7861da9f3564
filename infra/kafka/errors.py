"""Errors raised while fetching, starting or stopping the local Kafka broker."""

from infra.local_service import ServiceError


class KafkaSetupError(ServiceError):
    """A prerequisite is missing, a download failed, or the broker could not start or stop."""
