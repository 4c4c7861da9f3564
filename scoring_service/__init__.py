"""The long-running Kafka scorer that hot-swaps model versions."""
