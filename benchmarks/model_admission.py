"""Benchmark: model admission with Ed25519 signatures against the removed HMAC-SHA256 check, in one run.

Envelopes of real flight delay models: the served architecture of ``use_cases.flight_delay.model`` (untrained:
verifying, loading and the canary cost the same), ``--members`` members fused into one MLP (2 is the model the
loop serves, ~90 KB; more members make an MB-sized one). Each envelope is built twice from the same fields:
signed with Ed25519 as ``ml.publish.build_envelope`` does now, and as the removed HMAC-SHA256 publisher did (no
key id). In this process, each step timed ``--repeats`` times (``--admission-repeats`` for the steps that load
the model), both methods alternated, the median kept:

- signature: the primitive alone over the canonical JSON: Ed25519 ``verify`` vs HMAC-SHA256 + ``compare_digest``;
- verify: ``ml.publish.verify_envelope`` (decode, schema, key and revocation checks, Ed25519, SHA-256 of the
  artifact) against a trust store read beforehand, vs ``hmac_verify`` below: the REMOVED HMAC path of
  ``verify_envelope``, reimplemented here for this comparison only (same decode, schema, canonical JSON and
  SHA-256);
- trust_read: reading the trust folder (two public keys and a revoked.json), which the new code does for each
  envelope; the HMAC path had nothing to read (counted as 0 in its admission, not as a ratio);
- admission_serving: ``scoring_service.model_loader.admit`` of the version already serving (verify, trust read,
  preprocessing; no load), as at a scorer's start or a re-read of the topic;
- admission: ``admit`` of a new version (verify, trust read, preprocessing, archive check, Keras load with
  ``safe_mode=True``, numpy plan, canary batch), in process and on one TensorFlow thread as the loader child
  runs it. The HMAC variant runs the same ``admit`` with its verification swapped for ``hmac_verify``.

No broker. Logs go to stderr; the last stdout line is one JSON object: per envelope (``members``,
``artifact_bytes``, ``envelope_bytes``) the medians in ms of ``ed25519`` and ``hmac``, and ``ed25519_to_hmac``
(the ratio of each step both have).

    .venv/bin/python benchmarks/model_admission.py [--members 2,10] [--repeats 301] [--admission-repeats 21]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One thread each, as the scorer's loader child runs TensorFlow (scoring_service.model_loader._serve).
for _var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from ml.errors import EnvelopeRejected  # noqa: E402
from ml.keras_models import from_bytes, to_bytes  # noqa: E402
from ml.publish import ModelEnvelope, build_envelope, canonical_json, verify_envelope  # noqa: E402
from ml.signing import Signer, TrustStore  # noqa: E402
from scoring_service import model_loader  # noqa: E402
from scoring_service.model_loader import AdmissionPolicy, admit  # noqa: E402
from use_cases.flight_delay import preprocessing as features  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402

log = logging.getLogger("bench")
MODEL = "flight_delay"
HMAC_KEY = b"the-removed-shared-hmac-key-32-bytes!"


# ---------------------------------------------------------------- the removed HMAC-SHA256 path (comparison only)

def hmac_sign(envelope: ModelEnvelope) -> bytes:
    """The envelope as the removed HMAC publisher wrote it: no key id, HMAC-SHA256 over the other fields."""
    doc = envelope.model_dump(mode="json", exclude={"signature", "key_id"})
    doc["signature"] = hmac.new(HMAC_KEY, canonical_json(doc), hashlib.sha256).hexdigest()
    return orjson.dumps(doc)


def hmac_verify(raw: bytes, key: bytes = HMAC_KEY) -> ModelEnvelope:
    """REMOVED from ml.publish.verify_envelope, reimplemented for this benchmark: decode, schema, HMAC-SHA256
    over the canonical JSON of the fields as received, SHA-256 of the artifact."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise EnvelopeRejected("undecodable", f"undecodable: {e}") from e
    envelope = ModelEnvelope.model_validate(doc)
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    if not hmac.compare_digest(hmac.new(key, canonical_json(unsigned), hashlib.sha256).hexdigest(),
                               envelope.signature):
        raise EnvelopeRejected("signature", f"bad signature for {envelope.model_name} v{envelope.model_version}")
    if not hmac.compare_digest(hashlib.sha256(envelope.artifact()).hexdigest(), envelope.artifact_sha256):
        raise EnvelopeRejected("sha256", "artifact sha256 mismatch")
    return envelope


class _NoTrustStore:
    """The HMAC path's trust store: a shared key in memory, nothing to read."""

    def read(self) -> None:
        return None


@contextmanager
def hmac_admission():
    """``admit`` with its verification swapped for the removed HMAC check."""
    original = model_loader.verify_envelope
    model_loader.verify_envelope = lambda raw, _trusted: hmac_verify(raw)
    try:
        yield
    finally:
        model_loader.verify_envelope = original


# ---------------------------------------------------------------- envelopes and timing

def flight_model_artifact(fitted: features.FlightPreprocessing, members: int, seed: int) -> bytes:
    """The ``.keras`` bytes of the served flight architecture with ``members`` members fused."""
    import keras

    from use_cases.flight_delay.model import assemble, build

    keras.utils.set_random_seed(seed)
    return to_bytes(assemble(fitted, [build(fitted) for _ in range(members)]))


def trust_folder(folder: Path, signer: Signer) -> TrustStore:
    """A trust folder as after a rotation: the signer's public key, a second trusted key, and a revoked one."""
    other, revoked = Signer.generate(), Signer.generate()
    for s in (signer, other):
        (folder / f"{s.key_id}.pem").write_bytes(s.public_pem())
    (folder / "revoked.json").write_text(orjson.dumps({"keys": [revoked.key_id], "versions": []}).decode())
    return TrustStore(folder, model_name=MODEL)


def median_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The median wall time (ms) of each function, the functions alternated within each repetition."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: round(statistics.median(t), 4) for name, t in times.items()}


def bench_envelope(fitted, members: int, signer: Signer, trust: TrustStore, args) -> dict[str, Any]:
    artifact = flight_model_artifact(fitted, members, seed=members)
    envelope = build_envelope(model_name=MODEL, model_version=members, run_id=f"bench-{members}",
                              model_uri=f"models:/{MODEL}/{members}", preprocessing=fitted.to_dict(),
                              metrics={"roc_auc": 0.7}, decision_id=f"bench-{members}", artifact=artifact,
                              signer=signer)
    ed_raw, hmac_raw = envelope.to_bytes(), hmac_sign(envelope)
    trusted = trust.read()
    # Both paths accept their own envelope and refuse the other's, before anything is timed.
    assert verify_envelope(ed_raw, trusted) == envelope and hmac_verify(hmac_raw).artifact() == artifact
    for refused, check in ((hmac_raw, lambda raw: verify_envelope(raw, trusted)), (ed_raw, hmac_verify)):
        try:
            check(refused)
            raise AssertionError("an envelope of the other method was accepted")
        except EnvelopeRejected:
            pass

    doc = orjson.loads(ed_raw)
    message = canonical_json({k: v for k, v in doc.items() if k != "signature"})
    signature, public_key = bytes.fromhex(envelope.signature), signer.public_key
    hmac_doc = orjson.loads(hmac_raw)
    hmac_message = canonical_json({k: v for k, v in hmac_doc.items() if k != "signature"})
    ed_policy = AdmissionPolicy(model_name=MODEL, use_case=MODEL, trust=trust, max_model_bytes=64 << 20,
                                canary_rows=64)
    hmac_policy = AdmissionPolicy(model_name=MODEL, use_case=MODEL, trust=_NoTrustStore(),
                                  max_model_bytes=64 << 20, canary_rows=64)
    serving = (envelope.model_version, envelope.artifact_sha256)

    def ed_admit(current):
        return lambda: admit(ed_raw, ed_policy, current, load=from_bytes)

    def hmac_admit(current):
        def run():
            with hmac_admission():
                return admit(hmac_raw, hmac_policy, current, load=from_bytes)
        return run

    assert ed_admit(None)().plan is not None and hmac_admit(None)().plan is not None  # warm-up, untimed
    fast = median_ms({
        "ed25519_signature": lambda: public_key.verify(signature, message),
        "hmac_signature": lambda: hmac.compare_digest(
            hmac.new(HMAC_KEY, hmac_message, hashlib.sha256).hexdigest(), hmac_doc["signature"]),
        "ed25519_verify": lambda: verify_envelope(ed_raw, trusted),
        "hmac_verify": lambda: hmac_verify(hmac_raw),
        "ed25519_trust_read": trust.read,
        "ed25519_admission_serving": ed_admit(serving),
        "hmac_admission_serving": hmac_admit(serving),
    }, args.repeats)
    slow = median_ms({"ed25519_admission": ed_admit(None), "hmac_admission": hmac_admit(None)},
                     args.admission_repeats)
    timings = {**fast, **slow}
    ed = {k.removeprefix("ed25519_") + "_ms": v for k, v in timings.items() if k.startswith("ed25519_")}
    hm = {k.removeprefix("hmac_") + "_ms": v for k, v in timings.items() if k.startswith("hmac_")}
    result = {"members": members, "artifact_bytes": len(artifact), "envelope_bytes": len(ed_raw),
              "hmac_envelope_bytes": len(hmac_raw), "ed25519": ed, "hmac": hm,
              "ed25519_to_hmac": {k.removesuffix("_ms"): round(v / hm[k], 3) for k, v in ed.items() if k in hm}}
    log.info("%d members, envelope %d bytes: %s", members, len(ed_raw), result["ed25519_to_hmac"])
    return result


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=_ints, default=[2, 10],
                        help="members fused per model: 2 = the served flight model, more = a larger envelope")
    parser.add_argument("--repeats", type=int, default=301, help="repetitions of the steps without a model load")
    parser.add_argument("--admission-repeats", type=int, default=21, help="repetitions of a whole admission")
    parser.add_argument("--flights", type=int, default=20_000, help="flights the preprocessing is fitted on")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    fitted = features.fit(load_completed((1, 1), limit=args.flights))
    signer = Signer.generate()
    with tempfile.TemporaryDirectory(prefix="bench-trusted-") as folder:
        trust = trust_folder(Path(folder), signer)
        envelopes = [bench_envelope(fitted, members, signer, trust, args) for members in args.members]
    print(orjson.dumps({"repeats": args.repeats, "admission_repeats": args.admission_repeats,
                        "envelopes": envelopes}).decode())


if __name__ == "__main__":
    main()
