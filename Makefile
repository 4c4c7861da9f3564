# The README's two commands are `make demo` and `make test`; everything else here supports them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KAFKA_PORT ?= 9092
export KAFKA_DATA_DIR ?= .local/kafka
# plaintext (anyone may do anything), or sasl_ssl: TLS with a local CA, one SCRAM-SHA-512 principal per role, ACLs;
# each role's client settings in $(KAFKA_DATA_DIR)/clients/<role>.properties. Pass it to kafka-up, -status and -down.
export KAFKA_SECURITY ?= plaintext
# 1: one node; 3 (or more): a KRaft cluster, node i on KAFKA_PORT + 2(i-1), topics replicated 3 times with
# min.insync.replicas 2. Pass it to kafka-up (kafka-down and -status find the size in KAFKA_DATA_DIR).
export KAFKA_NODES ?= 1
# Every node's listener, for the clients the targets below start (any node may be down when they connect).
KAFKA_LOCAL_BOOTSTRAP := $(shell for i in $$(seq 0 $$(($(KAFKA_NODES) - 1))); do printf '%slocalhost:%s' "$${sep}" $$(($(KAFKA_PORT) + 2 * i)); sep=,; done)
export REGISTRY_PORT ?= 8081
export REGISTRY_DATA_DIR ?= .local/registry
# Where every client (the loop, the scorer, the DAGs) registers and reads the topics' schemas: the local registry's
# Confluent-compatible API unless set to another Confluent-compatible registry.
export SCHEMA_REGISTRY_URL ?= http://localhost:$(REGISTRY_PORT)/apis/ccompat/v7
# The tests and the benchmarks start a registry of their own unless SCHEMA_REGISTRY_URL names one (tests/conftest.py):
# not this default.
OWN_REGISTRY := $(if $(filter file,$(origin SCHEMA_REGISTRY_URL)),env -u SCHEMA_REGISTRY_URL)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export DEMO_MONTHS ?= 1-12

.PHONY: setup lock data-docs-assets kafka-fetch kafka-up kafka-down kafka-status registry-fetch registry-up registry-down \
	registry-status airflow-up airflow-down airflow-status scorer demo demo-down helm k8s-check test test-fast bench clean

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

kafka-up: kafka-fetch  ## Start the local broker on localhost:$(KAFKA_PORT) (KAFKA_NODES=3: a cluster; KAFKA_SECURITY=sasl_ssl: secured); returns once it answers
	@$(PY) -m infra.kafka up

kafka-down: setup  ## Stop the local broker (every node of a cluster)
	@$(PY) -m infra.kafka down

kafka-status: setup
	@$(PY) -m infra.kafka status

registry-fetch: setup  ## Fetch Apicurio Registry from Maven Central (cached); names the Java 21+ it runs on
	@$(PY) -m infra.registry fetch

# kafkasql storage: the schemas live in topics of the local broker, which must run first; a secured one is reached as
# its admin principal.
REGISTRY_ENV := KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-$(KAFKA_LOCAL_BOOTSTRAP)} \
	$(if $(filter sasl_ssl,$(KAFKA_SECURITY)),KAFKA_CLIENT_CONFIG=$${KAFKA_CLIENT_CONFIG:-$(abspath $(KAFKA_DATA_DIR))/clients/admin.properties})
registry-up: registry-fetch kafka-up  ## Start the local schema registry on localhost:$(REGISTRY_PORT); returns once it answers
	@$(REGISTRY_ENV) $(PY) -m infra.registry up

registry-down: setup  ## Stop the local schema registry
	@$(PY) -m infra.registry down

registry-status: setup
	@$(REGISTRY_ENV) $(PY) -m infra.registry status

data-docs-assets: setup  ## Fetch the Data Docs pages' scripts, styles and fonts (WebJars) from Maven Central (cached); prints their folder
	@$(PY) -m infra.data_docs fetch

# The runs' Data Docs load their scripts and styles from copies of the fetched assets, not from CDNs (offline too),
# unless DATA_DOCS_ASSETS_DIR names another folder.
DOCS_ENV := DATA_DOCS_ASSETS_DIR=$${DATA_DOCS_ASSETS_DIR:-$$($(PY) -m infra.data_docs fetch)}

airflow-up: registry-up data-docs-assets  ## Start local Airflow (standalone) with the repo's dags/ and plugins/; prints the login
	@$(DOCS_ENV) KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-$(KAFKA_LOCAL_BOOTSTRAP)} $(PY) -m infra.airflow up

airflow-down: setup
	@$(PY) -m infra.airflow down

airflow-status: setup
	@$(PY) -m infra.airflow status

scorer: registry-up  ## Run the streaming scorer of USE_CASE (default flight_delay) in the foreground; Ctrl-C stops it
	@USE_CASE=$${USE_CASE:-flight_delay} KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-$(KAFKA_LOCAL_BOOTSTRAP)} $(PY) -m scoring_service

# A broker or registry that was not running before the demo is stopped after it (also on Ctrl-C): nothing is left
# behind. The registry stops first: it keeps its schemas in the broker.
demo: kafka-fetch registry-fetch data-docs-assets  ## The whole loop on 2013 (Airflow DAG per month, scorer hot swaps); report in reports/demo/
	@export KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-$(KAFKA_LOCAL_BOOTSTRAP)} $(DOCS_ENV); stop=; \
	$(PY) -m infra.kafka status >/dev/null 2>&1 || stop='$(PY) -m infra.kafka down'; \
	$(PY) -m infra.registry status >/dev/null 2>&1 || stop="$(PY) -m infra.registry down; $$stop"; \
	trap "$$stop" EXIT; \
	$(PY) -m infra.kafka up && $(PY) -m infra.kafka check && $(PY) -m infra.registry up && \
	$(PY) -m infra.demo run

demo-down: setup  ## Stop what an interrupted demo left running (scorer, Airflow, MLflow)
	@$(PY) -m infra.demo down

# Helm for the Kubernetes checks, built from the Go module proxy into .local/bin (Go is on the CI machines; no Helm
# package is). The stamp names the version, so changing HELM_VERSION rebuilds it.
HELM_VERSION := v4.3.2
HELM := .local/bin/helm
HELM_STAMP := .local/bin/.helm-$(HELM_VERSION)
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
CHART := deploy/helm/retrain-loop-scorer

helm: $(HELM_STAMP)  ## Build Helm $(HELM_VERSION) into .local/bin with Go (no-op when built)

$(HELM_STAMP):
	@test -x "$(GO)" || command -v "$(GO)" >/dev/null || { echo "error: Go not found ($(GO)): building Helm $(HELM_VERSION) for the Kubernetes checks needs Go 1.26 or newer (https://go.dev/doc/install), or set GO=/path/to/go" >&2; exit 1; }
	GOBIN=$(abspath .local/bin) $(GO) install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)
	@touch $@

k8s-check: setup helm  ## Kubernetes deployment without a cluster: helm lint and template of the chart, tests/unit/test_helm.py and test_airflow_values.py
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/values-sasl-ssl.yaml
	$(HELM) template scorers $(CHART) -f $(CHART)/values-sasl-ssl.yaml --kube-version 1.33.0 >/dev/null
	$(PY) -m pytest tests/unit/test_helm.py tests/unit/test_airflow_values.py

# `make test` runs the suite as two pytest processes side by side, each with its own broker and registry: most
# integration tests wait on services (a session timeout, a DAG run, a JVM starting), so two cores do far more
# at once. TEST_SIDE holds long modules that need no other; the rest keep the order of a single run (the DAG
# tests import Airflow first in theirs). The side's output is printed after the rest's. TEST_ALONE runs last, on
# its own: the three-node fault tests kill and restart brokers under load and time sessions out, which two
# processes beside them would race. TEST_JOBS=1 runs everything in one process.
TEST_JOBS ?= 2
TEST_ALONE := tests/integration/test_cluster_faults.py
TEST_SIDE := tests/integration/test_demo.py tests/integration/test_secured_loop.py \
	tests/integration/test_event_trigger.py tests/integration/test_use_case_package.py \
	tests/integration/test_airflow_rest.py
TEST_SIDE_LOG := .local/test-logs/pytest-side.log

test: kafka-fetch registry-fetch data-docs-assets helm  ## Everything: unit and integration tests against a real broker and registry
ifeq ($(TEST_JOBS),1)
	$(OWN_REGISTRY) $(PY) -m pytest
else
	@mkdir -p $(dir $(TEST_SIDE_LOG))
	@echo "pytest $(TEST_SIDE) runs beside the rest (its output follows theirs; live in $(TEST_SIDE_LOG)), then $(TEST_ALONE)"
	@$(OWN_REGISTRY) $(PY) -m pytest $(TEST_SIDE) > $(TEST_SIDE_LOG) 2>&1 & side=$$!; \
	trap 'kill $$side 2>/dev/null' INT TERM; \
	$(OWN_REGISTRY) $(PY) -m pytest $(addprefix --ignore=,$(TEST_SIDE) $(TEST_ALONE)); rest=$$?; \
	wait $$side; side_rc=$$?; \
	echo "========== pytest $(TEST_SIDE) (exit $$side_rc) =========="; cat $(TEST_SIDE_LOG); \
	$(OWN_REGISTRY) $(PY) -m pytest $(TEST_ALONE); alone=$$?; \
	test $$rest -eq 0 && test $$side_rc -eq 0 && test $$alone -eq 0
endif

test-fast: setup helm  ## Unit tests only
	$(OWN_REGISTRY) $(PY) -m pytest -m "not integration and not slow"

bench: kafka-fetch registry-fetch  ## Run the committed benchmarks; JSON lines into reports/bench/
	@mkdir -p reports/bench
	@for b in foundation pipeline replay_snapshot snapshot_cpu scale train_eval scorer_throughput hot_swap shadow rollback crash_recovery event_trigger model_quality gate_interval dag_run registry_start \
		wire_format model_admission scorer_security acl_matrix cluster_faults; do \
		echo "benchmarks/$$b.py"; $(OWN_REGISTRY) $(PY) benchmarks/$$b.py 2>reports/bench/$$b.log | tail -1 | tee reports/bench/$$b.json; \
	done

# The registry before the broker it keeps its schemas in.
clean: demo-down airflow-down registry-down kafka-down
	rm -rf .local
