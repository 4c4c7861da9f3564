"""Local MLflow tracking server for the demo; the MLflow image of the compose stack (Dockerfile)."""
