"""Keras in a child process: the scorer never imports TensorFlow, and loading a model never stalls scoring.

Loading a ``.keras`` archive and running Keras on the canary batch hold Python's GIL for hundreds of
milliseconds; in the scorer's own process that would pause the scoring thread. So one child process
(``python -m scoring_service.model_loader``, started once at a lower CPU priority, and kept) does it: it loads the artifact with ``safe_mode=True``,
turns the model into a plain ``ForwardPlan`` (configs and weight arrays) and, on request, computes Keras's
own output for the canary batch. Only arrays cross the pipe, never a pickled Keras object from the topic.
A child that dies or hangs on an artifact is replaced, and that model is refused.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from scoring_service.inference import ForwardPlan, UnsupportedModel, forward_plan

log = logging.getLogger(__name__)

# The child yields the CPU to the scoring process whenever both want it. (The model watcher thread is not
# niced: preempted while it holds the GIL, it would hold up the scoring thread.)
CHILD_NICENESS = 10


class LoaderFailed(Exception):
    """The child refused a request; ``kind`` is the rejection kind (load, architecture, canary)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


def _serve(conn: Connection) -> None:
    """The child's loop: ("load", bytes) -> plan; ("call", inputs) -> Keras's output of the last model."""
    # Ctrl-C reaches the whole process group: the scorer shuts down and closes the pipe, which ends this loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(CHILD_NICENESS)
    # Started in a session of its own: where Linux groups CPU time by session (autogroup, on a host without
    # containers), a niced session yields to the scorer's and to every other one, not only within the scorer's.
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(CHILD_NICENESS))
    except OSError:  # not Linux, or no autogroup: the process niceness above is what counts
        pass
    # One thread each: a model this small loads as fast on one core, and TensorFlow's default pools (one
    # thread per core) took every core from scoring and the broker for the length of a load.
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from ml.model import from_bytes  # TensorFlow is imported here, in the child only

    model = None
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the scorer went away
            return
        if request is None:
            return
        op, payload = request
        try:
            if op == "load":
                model = None
                try:
                    model = from_bytes(payload)
                except Exception as e:  # Keras raises many types for a broken archive; all mean "cannot load"
                    raise LoaderFailed("load", f"{type(e).__name__}: {str(e)[:300]}") from e
                try:
                    conn.send(("ok", forward_plan(model)))
                except UnsupportedModel as e:
                    raise LoaderFailed("architecture", str(e)) from e
            elif op == "call":
                if model is None:
                    raise LoaderFailed("canary", "no model loaded")
                try:
                    conn.send(("ok", np.asarray(model(payload, training=False))))
                except Exception as e:  # wrong inputs for this model, or a failing layer
                    raise LoaderFailed("canary", f"Keras failed on the canary batch: {type(e).__name__}: "
                                                 f"{str(e)[:300]}") from e
            else:
                raise LoaderFailed("load", f"unknown request {op!r}")
        except LoaderFailed as e:
            conn.send(("error", e.kind, e.reason))


class ModelLoader:
    """The parent's handle on the loader child: ``load`` then ``keras_output`` for the same model.

    Not thread-safe: the model watcher thread is its only user. ``timeout_s`` bounds each request; the
    first one includes the child's TensorFlow import (7-11 s).
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def start(self) -> None:
        """Start the child now, so its TensorFlow import overlaps with the scorer's own start."""
        if self._process is not None and self._process.poll() is None:
            return
        if self._conn is not None:  # the previous child died between requests
            self._conn.close()
        # A socket pair rather than multiprocessing's spawn, which re-imports the parent's __main__ module.
        ours, theirs = socket.socketpair()
        with theirs:
            # Its own session (see _serve); it still ends with the scorer, whose end of the pipe closes.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "scoring_service.model_loader", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        self._conn = Connection(ours.detach())
        log.info("model loader process %d started", self._process.pid)

    def load(self, artifact: bytes) -> ForwardPlan:
        """The plan of the ``.keras`` artifact; raises LoaderFailed (load, architecture)."""
        return self._request("load", artifact)

    def keras_output(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Keras's own output for ``inputs`` with the model last loaded; raises LoaderFailed (canary)."""
        return self._request("call", inputs)

    def _request(self, op: str, payload: Any) -> Any:
        self.start()
        started = time.monotonic()
        try:
            self._conn.send((op, payload))
            if not self._conn.poll(self.timeout_s):
                self._replace(f"no answer to {op!r} within {self.timeout_s:.0f} s")
                raise LoaderFailed("load", f"model loader gave no answer within {self.timeout_s:.0f} s "
                                           "(MODEL_LOAD_TIMEOUT_S)")
            answer = self._conn.recv()
        except (EOFError, OSError) as e:
            try:
                code = self._process.wait(5)
            except subprocess.TimeoutExpired:  # its end of the pipe closed, yet it runs on: replaced below
                code = None
            self._replace(f"died during {op!r} (exit code {code})")
            raise LoaderFailed("load", f"model loader process died (exit code {code})") from e
        if answer[0] == "error":
            raise LoaderFailed(answer[1], answer[2])
        log.debug("model loader %s answered in %.0f ms", op, (time.monotonic() - started) * 1000)
        return answer[1]

    def _replace(self, why: str) -> None:
        log.warning("model loader process %s %s: replacing it", self._process.pid if self._process else None, why)
        self.close()
        self.start()

    def close(self) -> None:
        """Stop the child (it is a daemon too: it never outlives the scorer)."""
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (OSError, ValueError):
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
