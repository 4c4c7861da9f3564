"""The docker compose deployment (docker-compose.yml) seen through the Docker engine API: ``status``."""
