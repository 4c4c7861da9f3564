# The README's two commands are `make demo` and `make test`; everything else here supports them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KAFKA_PORT ?= 9092
export KAFKA_DATA_DIR ?= .local/kafka
export TF_CPP_MIN_LOG_LEVEL ?= 2
export DEMO_MONTHS ?= 1-12

.PHONY: setup lock kafka-fetch kafka-up kafka-down kafka-status airflow-up airflow-down airflow-status \
	scorer demo demo-down test test-fast bench clean

setup: $(STAMP)  ## Create or update .venv from constraints.txt (no-op when nothing changed)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "error: $(PYTHON) is not Python 3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

lock:  ## Re-resolve pyproject.toml and rewrite constraints.txt
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet -e '.[dev]'
	{ head -2 constraints.txt; .venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock

kafka-fetch: setup  ## Fetch the Apache Kafka jars from Maven Central (cached)
	@$(PY) -m infra.kafka fetch

kafka-up: kafka-fetch  ## Start the local broker on localhost:$(KAFKA_PORT); returns once it answers
	@$(PY) -m infra.kafka up

kafka-down: setup  ## Stop the local broker
	@$(PY) -m infra.kafka down

kafka-status: setup
	@$(PY) -m infra.kafka status

airflow-up: kafka-up  ## Start local Airflow (standalone) with the repo's dags/ and plugins/; prints the login
	@$(PY) -m infra.airflow up

airflow-down: setup
	@$(PY) -m infra.airflow down

airflow-status: setup
	@$(PY) -m infra.airflow status

scorer: kafka-up  ## Run the streaming scorer of USE_CASE (default flight_delay) in the foreground; Ctrl-C stops it
	@USE_CASE=$${USE_CASE:-flight_delay} $(PY) -m scoring_service

# A broker that was not running before the demo is stopped after it (also on Ctrl-C): nothing is left behind.
demo: kafka-fetch  ## The whole loop on 2013 (Airflow DAG per month, scorer hot swaps); report in reports/demo/
	@$(PY) -m infra.kafka status >/dev/null 2>&1 || trap '$(PY) -m infra.kafka down' EXIT; \
	$(PY) -m infra.kafka up && $(PY) -m infra.kafka check && \
	KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-localhost:$(KAFKA_PORT)} $(PY) -m infra.demo run

demo-down: setup  ## Stop what an interrupted demo left running (scorer, Airflow, MLflow)
	@$(PY) -m infra.demo down

test: kafka-fetch  ## Everything: unit and integration tests against a real broker
	$(PY) -m pytest

test-fast: setup  ## Unit tests only
	$(PY) -m pytest -m "not integration and not slow"

bench: kafka-fetch  ## Run the committed benchmarks; JSON lines into reports/bench/
	@mkdir -p reports/bench
	@for b in foundation pipeline replay_snapshot train_eval scorer_throughput hot_swap crash_recovery event_trigger model_quality dag_run; do \
		echo "benchmarks/$$b.py"; $(PY) benchmarks/$$b.py 2>reports/bench/$$b.log | tail -1 | tee reports/bench/$$b.json; \
	done

clean: demo-down airflow-down kafka-down
	rm -rf .local
