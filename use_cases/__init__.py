"""The built-in use cases of the loop, one package each, registered under the entry-point group
``kafka_retrain_loop.use_cases`` (pyproject.toml). A use case of another team lives in its own distribution
the same way (see examples/arrival_delay_minutes)."""
