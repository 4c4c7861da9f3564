"""MLflow on SQLite (runs, lineage, versions, the champion alias) and signed envelopes on a real compacted topic."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer, TopicPartition
from pydantic import BaseModel, SecretStr

from ml.errors import LoopError, ModelTooLarge, RegistryUnavailable
from ml.keras_models import from_bytes, predict
from ml.numpy_forward import NumpyForward
from ml.publish import build_envelope, publish, read_envelopes
from ml.registry import ChampionInfo, Registry
from ml.settings import LoopSettings
from ml.signing import Signer
from ml.wire import HEADER_SIZE, Framing

pytestmark = pytest.mark.integration

# The loop's own key, trusted when it reads the topic back even without a trust folder (there is none here).
SIGNER = Signer.generate()
NO_TRUST_FOLDER = Path(tempfile.gettempdir()) / "registry-publish-test-no-trusted-keys"
PREPROCESSING = {"numeric": ["distance", "temp", "wind_speed", "dep_hour"], "version": 1}
MANIFESTS = [
    {"topic": "flights.completed", "partitions": [{"partition": 0, "start": 0, "end": 1200},
                                                  {"partition": 1, "start": 0, "end": 1100}],
     "rows": 2300, "content_sha256": "ab" * 32},
    {"topic": "flights.completed", "partitions": [{"partition": 0, "start": 1200, "end": 2000},
                                                  {"partition": 1, "start": 1100, "end": 1900}],
     "rows": 1600, "content_sha256": "cd" * 32},
]


class Decision(BaseModel):
    decision_id: str
    verdict: str
    metrics: dict[str, float]
    reasons: list[str]


@pytest.fixture(scope="module")
def keras_model():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy")
    return model


def _keras_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- registry


@pytest.mark.slow
def test_run_lineage_registration_champion_and_load_round_trip(tmp_path, keras_model, capfd):
    settings = LoopSettings(mlflow_tracking_uri=f"sqlite:///{tmp_path}/db/mlflow.db",
                            mlflow_artifact_root=tmp_path / "artifacts", mlflow_experiment="exp-test",
                            model_name="flight_delay_test")
    registry = Registry(settings)
    assert registry.champion() is None
    assert (tmp_path / "db" / "mlflow.db").is_file()

    decision = Decision(decision_id="d-1", verdict="promote", metrics={"auc": 0.71}, reasons=["no champion yet"])
    with registry.start_run("candidate-1", params={"epochs": 3, "window": 12}) as run_id:
        registry.log_metrics(run_id, {"auc": 0.71, "logloss": 0.55})
        lineage = registry.log_lineage(run_id, MANIFESTS)
        registry.log_decision(run_id, decision)
        model_uri = registry.log_model(run_id, keras_model, PREPROCESSING)
    assert lineage == "flights.completed[0:0-1200,1:0-1100];flights.completed[0:1200-2000,1:1100-1900]"
    assert model_uri.startswith("models:/m-")
    import mlflow

    signature = mlflow.models.get_model_info(model_uri).signature  # shown with the model in MLflow's UI
    assert signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 4)}}]
    assert signature.outputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 1)}}]
    assert "without specifying model signature" not in capfd.readouterr().err

    run = registry.client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"epochs": "3", "window": "12"}
    assert run.data.metrics == {"auc": 0.71, "logloss": 0.55}
    assert {k: run.data.tags[k] for k in ("lineage", "decision_id", "decision_verdict", "decision_reasons")} == {
        "lineage": lineage, "decision_id": "d-1", "decision_verdict": "promote",
        "decision_reasons": "no champion yet"}
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").resolve().as_uri())
    assert not Path("mlruns").exists()

    assert registry.register(run_id, model_uri) == 1
    assert registry.champion() is None  # registered is not promoted
    registry.promote(1)
    assert registry.champion() == ChampionInfo(
        version=1, run_id=run_id, model_uri="models:/flight_delay_test/1", preprocessing=PREPROCESSING,
        metrics={"auc": 0.71, "logloss": 0.55}, lineage=MANIFESTS)

    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = registry.load_model(1)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]  # loaded for predictions only
    np.testing.assert_allclose(loaded.predict(x, verbose=0), keras_model.predict(x, verbose=0), rtol=1e-6)
    fallback = registry.load_predictor(1)  # a Sequential model has no numpy pass from its archive: Keras loads it
    assert not isinstance(fallback, NumpyForward)
    np.testing.assert_allclose(predict(fallback, x), keras_model.predict(x, verbose=0), rtol=1e-6)
    # What is published: the archive as logged, byte for byte, read in a process that never imports Keras.
    archive = registry.model_archive(1)
    stored = next((tmp_path / "artifacts").rglob("data/model.keras")).read_bytes()
    assert archive == stored
    assert "Downloading artifacts" not in capfd.readouterr().err  # no progress bars in a task's or monitor's log
    np.testing.assert_allclose(from_bytes(archive).predict(x, verbose=0), keras_model.predict(x, verbose=0), rtol=1e-6)
    probe = ("import hashlib, sys; from ml.registry import Registry; from ml.settings import LoopSettings; "
             f"data = Registry(LoopSettings(mlflow_tracking_uri={settings.mlflow_tracking_uri!r}, "
             f"mlflow_artifact_root={str(tmp_path / 'artifacts')!r}, mlflow_experiment='exp-test', "
             "model_name='flight_delay_test')).model_archive(1); "
             "print(hashlib.sha256(data).hexdigest(), 'keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [hashlib.sha256(stored).hexdigest(), "False", "False"]

    # Explicit-run-id path (another task, another process): the model goes to the run, not a new one.
    with registry.start_run("candidate-2") as second:
        pass
    second_uri = registry.log_model(second, keras_model, PREPROCESSING)
    registry.log_lineage(second, MANIFESTS[1:])
    assert registry.register(second, second_uri) == 2
    registry.promote(2)
    champion = registry.champion()
    assert (champion.version, champion.run_id, champion.lineage) == (2, second, MANIFESTS[1:])
    assert registry.client().get_run(second).info.status == "FINISHED"


@pytest.mark.slow
def test_a_functional_version_is_loaded_for_predictions_without_tensorflow(tmp_path):
    """The gate's and the monitor's load: the numpy pass read from the archive, in a process that never imports
    TensorFlow, with Keras' outputs."""
    import keras

    keras.utils.set_random_seed(11)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Dropout(0.1)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    settings = LoopSettings(mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                            mlflow_artifact_root=tmp_path / "artifacts", mlflow_experiment="exp-test",
                            model_name="flight_delay_test")
    registry = Registry(settings)
    with registry.start_run("functional") as run_id:
        model_uri = registry.log_model(run_id, model, PREPROCESSING)
    assert registry.register(run_id, model_uri) == 1
    x = np.random.default_rng(2).normal(size=(64, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    probe = ("import sys; import numpy as np; from ml.keras_models import predict; from ml.registry import Registry; "
             "from ml.settings import LoopSettings; "
             f"r = Registry(LoopSettings(mlflow_tracking_uri={settings.mlflow_tracking_uri!r}, "
             f"mlflow_artifact_root={str(tmp_path / 'artifacts')!r}, mlflow_experiment='exp-test', "
             "model_name='flight_delay_test')); "
             f"m = r.load_predictor({model_uri!r}); v = r.load_predictor(1); x = np.load({str(tmp_path / 'x.npy')!r}); "
             f"np.save({str(tmp_path / 'y.npy')!r}, np.stack([predict(m, x), predict(v, x)])); "
             "print(type(m).__name__, type(v).__name__, 'keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["NumpyForward", "NumpyForward", "False", "False"]
    expected = model.predict(x, verbose=0)
    for outputs in np.load(tmp_path / "y.npy"):
        np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_a_version_without_a_keras_archive_is_refused_for_publishing(tmp_path):
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return [0.5] * len(model_input)

    settings = LoopSettings(mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                            mlflow_artifact_root=tmp_path / "artifacts", mlflow_experiment="exp-test",
                            model_name="flight_delay_test")
    registry = Registry(settings)
    with registry.start_run("not-keras") as run_id:  # the run is active: log_model attaches to it
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant())
    assert registry.register(run_id, info.model_uri) == 1
    with pytest.raises(LoopError, match="models:/flight_delay_test/1 holds no model.keras archive"):
        registry.model_archive(1)
    with pytest.raises(LoopError, match="models:/flight_delay_test/1 holds no model.keras archive"):
        registry.load_predictor(1)  # nor judged by the gate


def test_unreachable_mlflow_fails_fast_naming_the_uri(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    registry = Registry(LoopSettings(mlflow_tracking_uri=uri, mlflow_artifact_root=tmp_path, use_case="flight_delay"))
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=f"MLflow tracking server at {uri} is unreachable"):
        registry.champion()
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- publish


def _high_watermark(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        c.close()


def _settings(bootstrap: str, topic: str) -> LoopSettings:
    return LoopSettings(kafka_bootstrap_servers=bootstrap, topic_names={"models": topic},
                        model_signing_key=SecretStr(SIGNER.private_pem().decode()),
                        model_trusted_keys_dir=NO_TRUST_FOLDER, model_name="flight_delay_test")


def _envelope(version: int, artifact: bytes, signer: Signer = SIGNER):
    return build_envelope(model_name="flight_delay_test", model_version=version, run_id=f"run-{version}",
                          model_uri=f"models:/flight_delay_test/{version}", preprocessing=PREPROCESSING,
                          metrics={"auc": 0.7 + version / 100}, decision_id=f"d-{version}", artifact=artifact,
                          signer=signer)


@pytest.mark.slow
def test_publish_reads_back_verified_and_same_version_twice_is_a_noop(kafka_bootstrap, new_topic, keras_model):
    topic = new_topic("models", 1, {"cleanup.policy": "compact", "max.message.bytes": "300000"})
    settings = _settings(kafka_bootstrap, topic)
    artifact = _keras_bytes(keras_model)
    v1 = _envelope(1, artifact)

    first = publish(settings, v1)
    assert (first.published, first.partition, first.offset) == (True, 0, 0)
    assert first.size_bytes == len(b"flight_delay_test") + HEADER_SIZE + len(v1.to_bytes())  # framed
    assert read_envelopes(settings) == [v1]
    assert read_envelopes(settings)[0].artifact() == artifact

    again = publish(settings, v1)
    assert (again.published, again.offset) == (False, None)
    assert _high_watermark(kafka_bootstrap, topic) == 1

    # A record that fails verification is skipped by readers, and does not count as a published version.
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"flight_delay_test", value=b"not an envelope")
    assert producer.flush(10) == 0
    v2 = _envelope(2, artifact)
    second = publish(settings, v2)
    assert (second.published, second.offset) == (True, 2)
    assert [e.model_version for e in read_envelopes(settings)] == [1, 2]
    assert publish(settings, v2).published is False
    assert _high_watermark(kafka_bootstrap, topic) == 3

    # Signed by a key the loop does not trust: skipped too, so the same version signed by its own key is published.
    stranger = _envelope(3, artifact, Signer.generate())
    producer.produce(topic, key=b"flight_delay_test", value=Framing(settings).frame(topic, stranger.to_bytes()))
    assert producer.flush(10) == 0
    assert [e.model_version for e in read_envelopes(settings)] == [1, 2]
    assert publish(settings, _envelope(3, artifact)).published is True
    assert [(e.model_version, e.key_id) for e in read_envelopes(settings)][-1] == (3, SIGNER.key_id)


def test_oversized_envelope_is_refused_before_producing(kafka_bootstrap, new_topic):
    topic = new_topic("models", 1, {"cleanup.policy": "compact", "max.message.bytes": "300000"})
    settings = _settings(kafka_bootstrap, topic)
    big = _envelope(1, np.random.default_rng(1).bytes(300_000))
    with pytest.raises(ModelTooLarge,
                       match=rf"flight_delay_test v1 \(champion\) is \d+ bytes; topic {topic} accepts 300000"):
        publish(settings, big)
    assert _high_watermark(kafka_bootstrap, topic) == 0
    assert read_envelopes(settings) == []
