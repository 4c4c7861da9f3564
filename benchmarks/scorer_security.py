"""Benchmark: the scorer's rate and its ratio to a Kafka pass-through on a plaintext broker and on a SASL_SSL one
(SCRAM-SHA-512 over TLS, the standard authorizer), in one run, rounds alternated.

Each round makes fresh topics on one broker and measures as ``scorer_throughput`` does (pass-through: median of three
reads after an untimed one; then the scorer in process). On SASL_SSL every client runs as its role: the topics are
created and the ACLs applied by ``admin`` (``ml.acls``), pass-through and scorer run as ``scorer``, so TLS, SCRAM and
ACL checks are all paid. Last stdout line: JSON with per-mode medians and ``sasl_ssl_to_plaintext``.

    .venv/bin/python benchmarks/scorer_security.py [--events 100000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import scorer_throughput as bench  # noqa: E402
from benchmarks.replay_snapshot import kafka_cluster, local_broker  # noqa: E402
from ml import acls, client_ids  # noqa: E402
from ml.publish import publish  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from ml.use_cases import get  # noqa: E402
from use_cases.flight_delay import preprocessing as features  # noqa: E402

log = logging.getLogger("bench")


def secured_settings(cfg, **overrides):
    """Scorer settings as the ``scorer`` role, on topics the admin made and granted to the roles."""
    u = uuid.uuid4().hex[:8]
    prefix = f"bench-{u}."
    admin = LoopSettings(kafka_bootstrap_servers=cfg.bootstrap_servers, topic_prefix=prefix,
                         kafka_client_config=cfg.client_config("admin"))
    acls.apply(admin, [get("flight_delay")])
    # The scorer's own group and transactional id prefix, as the ACLs grant them.
    group = f"{client_ids.scorer_group('flight_delay')}-{u}"
    s = bench.bench_settings(cfg.bootstrap_servers, topic_prefix=prefix, group_id=group,
                             kafka_client_config=cfg.client_config("admin"), **overrides)
    # Pass-through writes beside the predictions: the one grant the loop itself never needs.
    out = f"{s.output_topic}-passthrough"
    from confluent_kafka.admin import AdminClient, NewTopic

    client = AdminClient(admin.kafka_config())
    client.create_topics([NewTopic(out, bench.PARTITIONS, 1)])[out].result(30)
    extra = [acls.Grant("scorer", "topic", out, "literal", op).binding("User:scorer") for op in ("write", "describe")]
    for fut in client.create_acls(extra).values():
        fut.result(30)
    as_scorer = type(s).model_validate({**s.model_dump(), "kafka_client_config": cfg.client_config("scorer"),
                                        "kafka_client_properties": None})
    return s, as_scorer


def measure(admin_side, scorer_side, events, envelope) -> dict:
    """Pass-through and scorer rates on fresh topics: produce as ``admin_side``, read and score as ``scorer_side``."""
    bench.produce_all(admin_side, events)
    passthrough_eps = bench.warm_passthrough(scorer_side, len(events))
    publish(bench.loop_settings(admin_side), envelope)
    scorer_eps, _ = bench.scorer_rate(scorer_side, len(events))
    log.info("%s: pass-through %.0f, scorer %.0f events/s", scorer_side.kafka_security, passthrough_eps, scorer_eps)
    return {"passthrough_eps": passthrough_eps, "scorer_eps": scorer_eps, "ratio": scorer_eps / passthrough_eps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    events, flights = bench.flight_events(args.events)
    contract = features.fit(flights)
    envelope, _ = bench.model_envelope(contract, 1, seed=1)
    runs: dict[str, list[dict]] = {"plaintext": [], "sasl_ssl": []}
    with kafka_cluster() as bootstrap, local_broker("sasl_ssl") as secured:
        for _ in range(args.rounds):
            s = bench.bench_settings(bootstrap)
            runs["plaintext"].append(measure(s, s, events, envelope))
            admin_side, scorer_side = secured_settings(secured)
            runs["sasl_ssl"].append(measure(admin_side, scorer_side, events, envelope))

    def summary(mode: str) -> dict:
        return {k: round(statistics.median(r[k] for r in runs[mode]), 3 if k == "ratio" else 0)
                for k in ("passthrough_eps", "scorer_eps", "ratio")}

    plain, secured_ = summary("plaintext"), summary("sasl_ssl")
    print(orjson.dumps({
        "events": len(events), "rounds": args.rounds, "plaintext": plain, "sasl_ssl": secured_,
        "runs": {mode: [{k: round(v, 3) for k, v in r.items()} for r in rs] for mode, rs in runs.items()},
        "sasl_ssl_to_plaintext": {"scorer_eps": round(secured_["scorer_eps"] / plain["scorer_eps"], 3),
                                  "passthrough_eps": round(secured_["passthrough_eps"] / plain["passthrough_eps"], 3)},
    }).decode())


if __name__ == "__main__":
    main()
