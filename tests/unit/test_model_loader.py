"""Model admission: every check of a `models` record runs in the loader child, a plain plan comes back, and
a dead or hung child is replaced."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import numpy as np
import pytest

from ml.keras_models import from_bytes, to_bytes
from ml.numpy_forward import NumpyForward
from ml.publish import build_envelope
from ml.signing import Signer, TrustStore
from scoring_service.model_checks import ModelRefused, canary_inputs
from scoring_service.model_loader import CHILD_NICENESS, AdmissionPolicy, ModelLoader, admit, keras_output_of
from use_cases.flight_delay import preprocessing
from use_cases.flight_delay.source import load_completed
from use_cases.flight_delay.use_case import FlightDelay

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIGNER = Signer.generate()


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> AdmissionPolicy:
    """Admission against a trust folder holding SIGNER's public key (read by the child for each request)."""
    trusted = tmp_path_factory.mktemp("trusted")
    (trusted / f"{SIGNER.key_id}.pem").write_bytes(SIGNER.public_pem())
    return AdmissionPolicy(model_name="flight_delay", use_case="flight_delay", trust=TrustStore(trusted),
                           max_model_bytes=1 << 20, canary_rows=32)


@pytest.fixture(scope="module")
def fitted():
    return preprocessing.fit(load_completed((1, 1), limit=1000))


@pytest.fixture(scope="module")
def model(fitted):
    import keras

    from use_cases.flight_delay.model import build

    keras.utils.set_random_seed(5)
    return build(fitted)


@pytest.fixture(scope="module")
def artifact(model) -> bytes:
    return to_bytes(model)


def record(version: int, artifact: bytes, fitted, *, name: str = "flight_delay", signer: Signer = SIGNER) -> bytes:
    return build_envelope(model_name=name, model_version=version, run_id=f"r{version}",
                          model_uri=f"models:/m/{version}", preprocessing=fitted.to_dict(), metrics={"auc": 0.7},
                          decision_id=f"d{version}", artifact=artifact, signer=signer).to_bytes()


@pytest.fixture(scope="module")
def loader():
    loader = ModelLoader(timeout_s=120)
    loader.start()
    yield loader
    loader.close()


def test_the_plan_admitted_in_the_child_scores_like_the_model(loader, fitted, model, artifact, policy):
    admission = loader.admit(record(4, artifact, fitted), policy, serving=None)
    assert (admission.model_name, admission.model_version) == ("flight_delay", 4)
    assert admission.preprocessing.fingerprint == fitted.fingerprint
    x = canary_inputs(FlightDelay(), fitted, 16)
    expected = np.asarray(model(x, training=False))
    assert np.max(np.abs(NumpyForward.from_plan(admission.plan)(x) - expected)) <= 1e-5


def test_the_serving_version_is_verified_but_not_loaded_again(loader, fitted, artifact, policy):
    first = loader.admit(record(4, artifact, fitted), policy, serving=None)
    again = loader.admit(record(4, artifact, fitted), policy, serving=(4, first.artifact_sha256))
    assert again.plan is None and again.model_version == 4


def test_another_models_record_is_skipped(loader, fitted, artifact, policy):
    assert loader.admit(record(4, artifact, fitted, name="other_model"), policy, serving=None) is None


@pytest.mark.parametrize("case, kind, version", [
    ("untrusted", "untrusted_key", None), ("undecodable", "undecodable", None), ("corrupt", "load", 6),
    ("oversized", "oversized", 7)])
def test_each_refusal_names_its_kind_and_the_child_keeps_serving(loader, fitted, artifact, case, kind, version, policy):
    raw = {"untrusted": lambda: record(5, artifact, fitted, signer=Signer.generate()),
           "undecodable": lambda: b"{not json",
           "corrupt": lambda: record(6, b"PK\x03\x04 not really a keras archive", fitted),
           "oversized": lambda: record(7, artifact, fitted)}[case]()
    checked = dataclasses.replace(policy, max_model_bytes=1000) if case == "oversized" else policy
    with pytest.raises(ModelRefused) as info:
        loader.admit(raw, checked, serving=None)
    assert (info.value.kind, info.value.version) == (kind, version)
    assert loader.admit(record(8, artifact, fitted), policy, serving=None).plan is not None


def test_the_child_reads_the_trust_folder_again_for_each_envelope(loader, fitted, artifact, policy, tmp_path):
    """Rotation and revocation without a restart: a public key dropped in is trusted by the next request, a
    revoked.json written meanwhile refuses the next one, and the policy's own revocations always apply."""
    rotated = Signer.generate()
    folder = tmp_path / "trusted"
    folder.mkdir()
    policy = dataclasses.replace(policy, trust=TrustStore(folder, revoked_versions=frozenset({7}),
                                                          model_name="flight_delay"))
    with pytest.raises(ModelRefused) as info:
        loader.admit(record(5, artifact, fitted, signer=rotated), policy, serving=None)
    assert info.value.kind == "untrusted_key" and rotated.key_id in info.value.reason
    (folder / f"{rotated.key_id}.pem").write_bytes(rotated.public_pem())
    assert loader.admit(record(5, artifact, fitted, signer=rotated), policy, serving=None).model_version == 5
    with pytest.raises(ModelRefused) as info:
        loader.admit(record(7, artifact, fitted, signer=rotated), policy, serving=None)
    assert (info.value.kind, info.value.reason) == ("revoked", f"flight_delay v7 is a revoked version (signed with "
                                                               f"key {rotated.key_id})")
    (folder / "revoked.json").write_text(f'{{"keys": ["{rotated.key_id}"]}}')
    with pytest.raises(ModelRefused) as info:
        loader.admit(record(5, artifact, fitted, signer=rotated), policy, serving=(5, "x"))
    assert info.value.kind == "revoked"  # even the version serving now is checked again
    (folder / "revoked.json").write_text("{not json")
    with pytest.raises(ModelRefused, match="cannot read the revocation list|revocation list .* is not") as info:
        loader.admit(record(5, artifact, fitted, signer=rotated), policy, serving=None)
    assert info.value.kind == "revoked"


def test_nan_outputs_fail_the_canary(fitted, policy):
    import keras

    from use_cases.flight_delay.model import build

    keras.utils.set_random_seed(6)
    broken = build(fitted)
    layer = broken.get_layer("p_delayed")
    layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    with pytest.raises(ModelRefused) as info:
        admit(record(9, to_bytes(broken), fitted), policy, None, load=from_bytes)
    assert (info.value.kind, info.value.version) == ("canary", 9)


def test_keras_failing_on_the_inputs_is_a_canary_refusal(model):
    with pytest.raises(ModelRefused) as info:
        keras_output_of(model)({"wrong": np.zeros((2, 3), np.float32)})
    assert info.value.kind == "canary"


class _ExitOnArrival:
    """A request payload that makes the child exit as it unpickles it: a crash in the middle of a request."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_child_dying_during_a_request_is_refused_and_replaced(loader, fitted, artifact, policy):
    with pytest.raises(ModelRefused, match="died") as info:
        loader._request("admit", _ExitOnArrival())
    assert info.value.kind == "load"
    assert loader.admit(record(4, artifact, fitted), policy, serving=None).plan is not None


def test_a_child_killed_between_requests_is_replaced_before_the_next(loader, fitted, artifact, policy):
    os.kill(loader._process.pid, signal.SIGKILL)
    loader._process.wait(10)
    assert loader.admit(record(4, artifact, fitted), policy, serving=None).plan is not None


def test_a_child_that_does_not_answer_in_time_is_replaced(fitted, artifact, policy):
    slow = ModelLoader(timeout_s=0.001)  # the child cannot even import TensorFlow in a millisecond
    try:
        with pytest.raises(ModelRefused, match="no answer"):
            slow.admit(record(4, artifact, fitted), policy, serving=None)
        assert slow._process.poll() is None  # a fresh child took its place
    finally:
        slow.close()


def test_closing_ends_a_child_that_cannot_read_a_request_to_stop():
    """Like one still importing TensorFlow (seconds after its start), here a stopped one (SIGSTOP): it is killed,
    not asked and waited for."""
    fresh = ModelLoader(timeout_s=120)
    fresh.start()
    child = fresh._process
    os.kill(child.pid, signal.SIGSTOP)
    fresh.close()
    assert child.returncode == -signal.SIGKILL and fresh._process is None


def _has_tensorflow(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "libtensorflow" in maps.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux /proc")
def test_the_child_imports_tensorflow_at_start_not_on_the_first_model():
    """The import (seconds) overlaps the scorer's start instead of delaying the first model to go live."""
    idle = ModelLoader(timeout_s=120)
    idle.start()
    try:
        deadline = time.monotonic() + 120
        while not _has_tensorflow(idle._process.pid):  # no request is ever sent
            assert idle._process.poll() is None, "the child exited"
            assert time.monotonic() < deadline, "no TensorFlow in the idle child after 120 s"
            time.sleep(0.2)
    finally:
        idle.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_the_child_runs_at_idle_priority_below_the_scorer(loader, fitted, artifact, policy):
    loader.admit(record(5, artifact, fitted), policy, serving=None)  # the child is up and serving
    pid = loader._process.pid
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert os.getpriority(os.PRIO_PROCESS, pid) == CHILD_NICENESS
