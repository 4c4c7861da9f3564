"""Model admission in a child process: the scorer never imports TensorFlow, and checking a model never
stalls scoring.

Verifying an envelope, loading the ``.keras`` archive and building and running the canary batch take tens
of milliseconds of Python: in the scorer's own process that work would hold the GIL, which the scoring thread
then waits for each time it takes it back after I/O. So one child process (``python -m
scoring_service.model_loader``, started once at a lower CPU priority, and kept) runs every check of
``admit`` on the raw record: the Ed25519 signature against the trust folder as it is now, revocations and
SHA-256, the fitted preprocessing, the archive's size, the Keras load with ``safe_mode=True``, the numpy pass
derived from the model and the canary batch against Keras's own output.
It returns an ``Admission``: the preprocessing and a plain ``ForwardPlan`` (configs and weight arrays). Only our
own plain data crosses the pipe, never a pickled object from the topic. A child that dies or hangs on a
record is replaced, and that model is refused.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ml import use_cases
from ml.errors import EnvelopeRejected, SigningKeyError
from ml.numpy_forward import ForwardPlan, NumpyForward, UnsupportedModel, forward_plan
from ml.preprocessing import Preprocessing
from ml.publish import verify_envelope
from ml.signing import TrustStore
from scoring_service import model_checks
from scoring_service.model_checks import ModelRefused

log = logging.getLogger(__name__)

# The child yields the CPU to the scoring process whenever both want it. (The model watcher thread is not
# niced: preempted while it holds the GIL, it would hold up the scoring thread.)
CHILD_NICENESS = 10


@dataclass(frozen=True)
class AdmissionPolicy:
    """What an envelope is checked against; sent with each request."""

    model_name: str
    use_case: str
    trust: TrustStore  # read again for each request: a rotated or revoked key counts at once
    max_model_bytes: int
    canary_rows: int


@dataclass(frozen=True)
class Admission:
    """A verified envelope of our model: ``plan`` is None when it is a version already loaded (serving, or in
    shadow)."""

    model_name: str
    model_version: int
    artifact_sha256: str
    preprocessing: Preprocessing
    plan: ForwardPlan | None
    stage: str = "champion"


Loaded = tuple[int, str]  # (version, artifact SHA-256) of a model the scorer holds


def _loaded(serving: Loaded | Collection[Loaded] | None) -> set[Loaded]:
    if serving is None:
        return set()
    if isinstance(serving, tuple) and len(serving) == 2 and isinstance(serving[0], int):  # one pair
        return {tuple(serving)}
    return {tuple(pair) for pair in serving}


def admit(raw: bytes, policy: AdmissionPolicy, serving: Loaded | Collection[Loaded] | None,
          load: Callable[[bytes], Any], stage: str = "champion") -> Admission | None:
    """Every check of one `models` record, with ``load`` (bytes -> Keras model); None when the record is
    another model's. ``serving``: the (version, artifact SHA-256) of each model loaded now (the champion's and
    the shadow's), not loaded again. ``stage``: the stage the record's key stands for, which the signed
    envelope must say too. Raises ModelRefused."""
    try:
        trusted = policy.trust.read()
    except SigningKeyError as e:  # an unreadable revocation list: refuse rather than ignore a revocation
        raise ModelRefused("revoked", f"trust store unusable: {e}") from e
    try:
        envelope = verify_envelope(raw, trusted)
    except EnvelopeRejected as e:
        raise ModelRefused(e.kind, e.reason) from e
    if envelope.model_name != policy.model_name:
        return None
    version, sha256 = envelope.model_version, envelope.artifact_sha256
    if envelope.stage != stage:  # e.g. a shadow's envelope copied under the champion key: the signature holds
        raise ModelRefused("stage", f"{envelope.model_name} v{version} is signed as a {envelope.stage}, but its "
                                    f"record is keyed as a {stage}'s", version)
    try:
        use_case = use_cases.get(policy.use_case)
        preprocessing = model_checks.read_preprocessing(use_case, envelope.preprocessing)
        if (version, sha256) in _loaded(serving):
            return Admission(envelope.model_name, version, sha256, preprocessing, plan=None, stage=stage)
        artifact = envelope.artifact()
        model_checks.check_archive(artifact, policy.max_model_bytes)
        try:
            model = load(artifact)
        except Exception as e:  # Keras raises many types for a broken archive; all mean "cannot load"
            raise ModelRefused("load", f"{type(e).__name__}: {str(e)[:300]}") from e
        plan = forward_plan(model)
        model_checks.warm_up(use_case, preprocessing, NumpyForward.from_plan(plan), keras_output_of(model),
                             policy.canary_rows)
    except ModelRefused as e:
        e.version = version  # the checks above know the artifact, not the envelope
        raise
    except UnsupportedModel as e:
        raise ModelRefused("architecture", str(e), version) from e
    return Admission(envelope.model_name, version, sha256, preprocessing, plan, stage)


def keras_output_of(model) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Keras's own output for a canary batch; a failing call is a canary refusal (ModelRefused)."""
    def call(inputs: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return np.asarray(model(inputs, training=False))
        except Exception as e:  # wrong inputs for this model, or a failing layer
            raise ModelRefused("canary", f"Keras failed on the canary batch: {type(e).__name__}: "
                                         f"{str(e)[:300]}") from e

    return call


def _serve(conn: Connection) -> None:
    """The child's loop: ("admit", (raw, policy, serving, stage)) -> ("ok", Admission | None) or
    ("error", kind, reason, version)."""
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
    # Linux's idle policy on top (inherited by the threads TensorFlow starts): a task waking up on the child's
    # CPU takes it at once, and a CPU running only the child counts as free when the kernel places a waking
    # task (at the niceness alone, the scoring thread waited for a CPU while the child loaded a model).
    # The child's share of a busy CPU is still its session's (above), so it is slowed, never starved.
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass
    # One thread each: a model this small loads as fast on one core, and TensorFlow's default pools (one
    # thread per core) took every core from scoring and the broker for the length of a load.
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    # TensorFlow is imported now, in the child only, while the scorer starts: not by the first model's load,
    # which would then wait seconds for it (``ml.keras_models`` imports Keras lazily).
    import keras  # noqa: F401

    from ml.keras_models import from_bytes

    while True:
        try:
            request = conn.recv()
        except EOFError:  # the scorer went away
            return
        op, payload = request
        try:
            if op != "admit":
                raise ModelRefused("load", f"unknown request {op!r}")
            raw, policy, serving, stage = payload
            conn.send(("ok", admit(raw, policy, serving, from_bytes, stage)))
        except ModelRefused as e:
            conn.send(("error", e.kind, e.reason, e.version))


class ModelLoader:
    """The parent's handle on the loader child.

    Not thread-safe: the model watcher thread is its only user. ``timeout_s`` bounds each request; one sent
    right after the child starts also waits for its TensorFlow import (seconds).
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

    def admit(self, raw: bytes, policy: AdmissionPolicy, serving: Loaded | Collection[Loaded] | None,
              stage: str = "champion") -> Admission | None:
        """``admit`` run in the child on a `models` record value; raises ModelRefused."""
        loaded = sorted(_loaded(serving))  # plain data across the pipe
        return self._request("admit", (raw, policy, loaded, stage))

    def _request(self, op: str, payload: Any) -> Any:
        self.start()
        started = time.monotonic()
        try:
            self._conn.send((op, payload))
            if not self._conn.poll(self.timeout_s):
                self._replace(f"no answer to {op!r} within {self.timeout_s:.0f} s")
                raise ModelRefused("load", f"model loader gave no answer within {self.timeout_s:.0f} s "
                                           "(MODEL_LOAD_TIMEOUT_S)")
            answer = self._conn.recv()
        except (EOFError, OSError) as e:
            try:
                code = self._process.wait(5)
            except subprocess.TimeoutExpired:  # its end of the pipe closed, yet it runs on: replaced below
                code = None
            self._replace(f"died during {op!r} (exit code {code})")
            raise ModelRefused("load", f"model loader process died (exit code {code})") from e
        if answer[0] == "error":
            raise ModelRefused(*answer[1:])
        log.debug("model loader %s answered in %.0f ms", op, (time.monotonic() - started) * 1000)
        return answer[1]

    def _replace(self, why: str) -> None:
        log.warning("model loader process %s %s: replacing it", self._process.pid if self._process else None, why)
        self.close()
        self.start()

    def close(self) -> None:
        """Stop the child at once. It holds nothing to save (a request is answered whole or not at all), and one still
        importing TensorFlow (seconds, after its start) would read a polite request to stop only once done."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.kill()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:  # stuck in the kernel: it ends when the kernel lets it
                log.warning("model loader process %d not ended 10 s after SIGKILL", self._process.pid)
            self._process = None


if __name__ == "__main__":
    # Run as the importable module, not as __main__, so what crosses the pipe pickles under its own name.
    from scoring_service import model_loader

    model_loader._serve(Connection(int(sys.argv[1])))
