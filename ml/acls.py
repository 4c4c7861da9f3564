"""Least-privilege Kafka ACLs for the loop's roles, derived from the use cases' topics and the clients' group ids.

Roles: ``replayer`` writes the use cases' event and label topics; ``loop`` snapshots them, publishes models, waits
for the scorers' reports and, as the live monitor (``ml.monitoring``, which signs what it publishes like the DAG's
tasks), reads the predictions (its shadow model's too) to roll back, promote and retire; ``scorer`` reads its
input and the models, writes predictions (its shadow model's too), dead letters and status reports under its own
group and transactional ids; ``monitor`` (the loop's page, dashboards) reads everything and writes nothing.
``admin`` is the cluster's super user (topics, ACLs) and gets no ACL. ``apply`` makes the cluster's ACLs of
these principals exactly the computed set: it adds what is missing and removes what is no longer granted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType, AdminClient,
                                   ResourcePatternType, ResourceType)

from ml import client_ids, use_cases
from ml.errors import BrokerUnavailable, LoopError
from ml.settings import LoopSettings
from ml.use_cases import UseCase

log = logging.getLogger(__name__)

# The cluster's answers to a client that may not manage ACLs (or to a cluster without an authorizer).
REFUSED = frozenset({KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.SECURITY_DISABLED,
                     KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._AUTHENTICATION})

ROLES = ("replayer", "loop", "scorer", "monitor")  # the roles with ACLs; "admin" is a super user
READ, WRITE, DESCRIBE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
TOPIC, GROUP, TXN = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
LITERAL, PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED


class AclError(LoopError):
    """The cluster refused to list, create or delete ACLs (e.g. the client is not a super user)."""


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW rule: ``role`` may do ``operation`` on the resource ``name`` (exact or a prefix)."""

    role: str
    resource: str  # "topic", "group", "transactional_id"
    name: str
    pattern: str  # "literal" or "prefixed"
    operation: str  # "read", "write", "describe", "describe_configs"

    def binding(self, principal: str) -> AclBinding:
        return AclBinding(ResourceType[self.resource.upper()], self.name, ResourcePatternType[self.pattern.upper()],
                          principal, "*", AclOperation[self.operation.upper()], AclPermissionType.ALLOW)


def _topic(role: str, topic: str, *operations: str) -> list[Grant]:
    return [Grant(role, "topic", topic, "literal", op) for op in ("describe", *operations)]


def _groups(role: str, *names: str) -> list[Grant]:
    # A name ending in "-" is a prefix the client completes with a random suffix.
    return [Grant(role, "group", n, "prefixed" if n.endswith("-") else "literal", "read") for n in names]


def grants(settings: LoopSettings, cases: Iterable[UseCase] | None = None) -> list[Grant]:
    """Every rule of every role for ``cases`` (default: all registered use cases), topics named by ``settings``."""
    cases = list(use_cases.registered() if cases is None else cases)
    models, status = settings.models_topic, settings.status_topic
    out: list[Grant] = []
    for uc in cases:
        t = uc.topics.resolved(settings)
        sources = list(dict.fromkeys((t.input, t.labels)))
        scorer_group = client_ids.scorer_group(uc.name)
        for topic in sources:
            out += _topic("replayer", topic, "write") + _topic("loop", topic, "read")
        out += _topic("loop", t.predictions, "read") + _topic("loop", t.shadow, "read")
        out += _topic("scorer", t.input, "read") + _topic("scorer", t.predictions, "write")
        out += _topic("scorer", t.shadow, "write") + _topic("scorer", t.dlq, "write")
        out += [Grant("scorer", "group", scorer_group, "prefixed", "read")]
        out += [Grant("scorer", "transactional_id", scorer_group, "prefixed", op) for op in ("write", "describe")]
        for topic in t.distinct():
            out += _topic("monitor", topic, "read")
    out += _topic("loop", models, "read", "write", "describe_configs") + _topic("loop", status, "read")
    out += _groups("loop", client_ids.SNAPSHOT_GROUP, client_ids.TOPIC_PROBE_GROUP, client_ids.MODELS_READER_GROUP,
                   client_ids.ROLLOUT_CHECK_GROUP, client_ids.STATUS_READER_GROUP, client_ids.LIVE_MONITOR_GROUP)
    out += _topic("scorer", models, "read") + _topic("scorer", status, "write")
    out += _groups("scorer", client_ids.MODEL_WATCHER_GROUP)
    out += _topic("monitor", models, "read") + _topic("monitor", status, "read")
    out += _groups("monitor", client_ids.SNAPSHOT_GROUP, client_ids.MODELS_READER_GROUP,
                   client_ids.STATUS_READER_GROUP)
    return sorted(set(out))


def principals(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Role -> Kafka principal: ``User:<role>`` (the local broker's SCRAM users) unless overridden."""
    return {role: (overrides or {}).get(role, f"User:{role}") for role in ROLES}


@dataclass(frozen=True)
class AclChanges:
    """What ``apply`` did: bindings created, deleted, and already in place."""

    created: list[AclBinding]
    deleted: list[AclBinding]
    kept: int


def _key(b: AclBinding) -> tuple:
    return (b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type)


def _existing(admin: AdminClient, principal: str, timeout: float) -> list[AclBinding]:
    flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None, AclOperation.ANY,
                           AclPermissionType.ANY)
    return admin.describe_acls(flt, request_timeout=timeout).result(timeout=timeout)


def apply(settings: LoopSettings, cases: Iterable[UseCase] | None = None, *,
          principal_of: Mapping[str, str] | None = None, dry_run: bool = False, timeout: float = 30.0) -> AclChanges:
    """Make the ACLs of the roles' principals exactly ``grants``: create the missing, delete the others.

    Idempotent. Raises AclError when the cluster refuses (the client must be a super user, e.g. the admin
    role's properties in KAFKA_CLIENT_CONFIG), BrokerUnavailable when it does not answer.
    """
    who = principals(principal_of)
    wanted = {_key(b): b for b in (g.binding(who[g.role]) for g in grants(settings, cases))}
    admin = AdminClient(settings.kafka_config({"log_level": 0}))
    try:
        have = {_key(b): b for p in who.values() for b in _existing(admin, p, timeout)}
        created = [b for k, b in wanted.items() if k not in have]
        deleted = [b for k, b in have.items() if k not in wanted]
        if not dry_run and created:
            for fut in admin.create_acls(created, request_timeout=timeout).values():
                fut.result(timeout=timeout)
        if not dry_run and deleted:
            filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                                        b.permission_type) for b in deleted]
            for fut in admin.delete_acls(filters, request_timeout=timeout).values():
                fut.result(timeout=timeout)
    except KafkaException as e:
        err = e.args[0] if e.args else e
        if getattr(err, "code", None) and err.code() in REFUSED:
            raise AclError(f"Kafka at {settings.kafka_bootstrap_servers} refused to manage ACLs as this client: "
                           f"{err.str()}; run `acls apply` with the admin role's settings "
                           "(KAFKA_CLIENT_CONFIG=.../clients/admin.properties)") from e
        raise BrokerUnavailable(settings.kafka_bootstrap_servers, err) from e
    log.info("ACLs on %s: %d created, %d deleted, %d kept%s", settings.kafka_bootstrap_servers, len(created),
             len(deleted), len(wanted) - len(created), " (dry run)" if dry_run else "")
    return AclChanges(created, deleted, len(wanted) - len(created))


def authorized(settings: LoopSettings, cases: Iterable[UseCase] | None = None, timeout: float = 30.0
               ) -> dict[str, set[str] | str]:
    """What the configured client may do on each topic of ``cases`` and the loop's own, as the broker answers
    (``DescribeTopics`` with authorized operations: nothing is read or written): topic -> operation names, or
    the error when the topic cannot even be described."""
    from confluent_kafka import TopicCollection

    from ml.topics import topic_specs

    topics = [spec.topic for spec in topic_specs(settings, None if cases is None else list(cases))]
    admin = AdminClient(settings.kafka_config({"log_level": 0}))
    out: dict[str, set[str] | str] = {}
    futures = admin.describe_topics(TopicCollection(topics), include_authorized_operations=True,
                                    request_timeout=timeout)
    for topic, fut in futures.items():
        try:
            ops = fut.result(timeout=timeout).authorized_operations or []
            out[topic] = {op.name.lower() for op in ops}
        except KafkaException as e:
            err = e.args[0] if e.args else e
            out[topic] = err.name() if hasattr(err, "name") else str(err)
    return out


def table(settings: LoopSettings, cases: Iterable[UseCase] | None = None) -> list[str]:
    """The grants as aligned lines (role, resource, pattern, name, operations), for the CLI and the README."""
    merged: dict[tuple[str, str, str, str], list[str]] = {}
    for g in grants(settings, cases):
        merged.setdefault((g.role, g.resource, g.pattern, g.name), []).append(g.operation)
    return [f"{role:<9} {res:<16} {pat:<8} {name:<32} {','.join(sorted(ops))}"
            for (role, res, pat, name), ops in sorted(merged.items(), key=lambda kv: (ROLES.index(kv[0][0]), kv[0]))]
