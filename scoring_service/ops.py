"""Operations surface: Prometheus metrics and the HTTP thread serving /healthz, /readyz and /metrics."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)


class Metrics:
    """The scorer's metrics, on a registry of their own (several scorers can live in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("scorer_events_in", "Input records consumed and processed.", registry=r)
        self.predictions_out = Counter("scorer_predictions_out", "Predictions delivered.", registry=r)
        self.dead_letters = Counter("scorer_dead_letters", "Input records sent to the DLQ.", ["error_class"],
                                    registry=r)
        self.batch_seconds = Histogram(
            "scorer_batch_seconds", "Time to decode, score and deliver one batch (commit included).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.model_version = Gauge("scorer_model_version", "Version of the model serving (0: none yet).",
                                   ["model_name"], registry=r)
        self.swaps = Counter("scorer_model_swaps", "Model versions that went live.", registry=r)
        self.rejected = Counter("scorer_models_rejected", "Model envelopes refused, by reason.", ["reason"],
                                registry=r)
        self.lag = Gauge("scorer_consumer_lag", "Records behind the high watermark, per input partition.",
                         ["topic", "partition"], registry=r)
        self.redelivered = Counter("scorer_records_redelivered", "Input records the consumer delivered a second time "
                                   "within one assignment, dropped as already scored.", registry=r)
        self.aborted = Counter("scorer_transactions_aborted", "exactly_once batches aborted and re-read.",
                               registry=r)
        self.shadow_model_version = Gauge("scorer_shadow_model_version", "Version of the shadow model (0: none).",
                                          ["model_name"], registry=r)
        self.shadow_predictions_out = Counter("scorer_shadow_predictions_out", "Shadow predictions delivered.",
                                              registry=r)
        self.shadow_failures = Counter("scorer_shadow_failures", "Batches whose shadow outputs were skipped because "
                                       "the shadow model failed on them, by reason.", ["reason"], registry=r)


class OpsServer:
    """HTTP thread: /healthz (the loop and the model watcher are alive), /readyz (a model is loaded and
    partitions are assigned), /metrics (Prometheus text format)."""

    def __init__(self, port: int, metrics: Metrics, live: Callable[[], tuple[bool, str]],
                 ready: Callable[[], tuple[bool, str]]) -> None:
        checks = {"/healthz": live, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/metrics":
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path in checks:
                    ok, detail = checks[self.path]()
                    self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:  # probes every few seconds: debug only
                log.debug("http %s", fmt % args)

        self._server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="scorer-ops", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()
        log.info("ops server on port %d: /healthz /readyz /metrics", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
