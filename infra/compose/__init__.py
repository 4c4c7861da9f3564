"""Overrides of docker-compose.yml (``*.yml`` here) and the one-shot that prepares the secured broker of
``sasl-ssl.yml`` (``python -m infra.compose kafka-setup``)."""
