"""Errors raised while fetching, starting or stopping the local Kafka broker."""


class KafkaSetupError(RuntimeError):
    """A prerequisite is missing, a download failed, or the broker could not start or stop."""
