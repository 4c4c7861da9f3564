"""How the monitor's decisions become acts, and where they are recorded.

A rollback publishes the previous version again through the same signed path as any publication (the scorers'
rollback path: the newest valid envelope wins); a shadow is promoted by publishing it as champion, or retired;
a retraining is a run of the use case's retraining DAG whose conf carries the reason. Every decision, acted on
or not, is appended to the decision log (JSON lines), logged to the judged version's MLflow run
(``monitor/<decision id>.json``) and tagged on its registered model version (``monitor.<action>``), so the page
and the next restart see it.
"""

from __future__ import annotations

import json
import logging

from ml.errors import LoopError
from ml.monitoring.airflow_runs import AirflowRuns
from ml.monitoring.policy import MonitorDecision
from ml.monitoring.settings import MonitorSettings
from ml.registry import MAX_TAG_CHARS, Registry

log = logging.getLogger(__name__)

DECIDED_TAG = "monitor.{action}"
ARTIFACT = "monitor/{decision_id}.json"


class Actions:
    """Carries out decisions for one use case (``settings.monitor_actions`` off: records them only)."""

    def __init__(self, settings: MonitorSettings, registry: Registry) -> None:
        self.settings, self.registry = settings, registry
        self.airflow = (AirflowRuns(settings.airflow_api_url, settings.airflow_api_username,
                                    settings.airflow_password())
                        if settings.airflow_api_url else None)

    def decided(self, version: int, action: str) -> bool:
        """Whether ``action`` was already decided for ``version`` (by this monitor or before a restart)."""
        mv = self.registry.client().get_model_version(self.registry.name, str(version))
        return DECIDED_TAG.format(action=action) in (mv.tags or {})

    def take(self, decision: MonitorDecision) -> str:
        """Act on ``decision`` and record it; returns what was done (for logs and tests)."""
        done = "recorded only (MONITOR_ACTIONS off)"
        if self.settings.monitor_actions:
            try:
                done = getattr(self, f"_{decision.action}")(decision)
            except LoopError as e:
                done = f"failed: {e}"
                log.error("monitor %s of %s v%d failed: %s", decision.action, decision.use_case,
                          decision.model_version, e)
        self._record(decision, done)
        return done

    def _rollback(self, d: MonitorDecision) -> str:
        from ml.pipeline import republish_step

        result = republish_step(self.settings, d.target_version)
        return (f"published v{d.target_version} again at {result.topic}[{result.partition}]@{result.offset}"
                if result.published else f"v{d.target_version} was already the latest envelope")

    def _promote_shadow(self, d: MonitorDecision) -> str:
        from ml.pipeline import promote_shadow_step

        result = promote_shadow_step(self.settings, d.model_version)
        return f"v{d.model_version} published as champion at {result.topic}[{result.partition}]@{result.offset}"

    def _retire_shadow(self, d: MonitorDecision) -> str:
        from ml.pipeline import retire_shadow_step

        result = retire_shadow_step(self.settings, reason=f"monitor decision {d.decision_id}: {d.reason}")
        return f"shadow v{d.model_version} retired at {result.topic}[{result.partition}]@{result.offset}"

    def _retrain(self, d: MonitorDecision) -> str:
        from ml.airflow_tasks import dag_id

        if self.airflow is None:
            return "retraining asked for, not started: AIRFLOW_API_URL is not set"
        run_id = f"live_{d.action}_{d.decision_id[:12]}"
        started = self.airflow.trigger(dag_id(d.use_case), run_id, {
            "trigger": f"monitor decision {d.decision_id}: {d.reason}"})
        return f"started {dag_id(d.use_case)} run {started}"

    def _record(self, d: MonitorDecision, done: str) -> None:
        """MLflow first, then the decision log's line, which is written whatever MLflow says: a line in the log
        means the decision is recorded everywhere it could be."""
        record = {**d.model_dump(mode="json"), "done": done}
        client = self.registry.client()
        try:
            mv = client.get_model_version(self.registry.name, str(d.model_version))
            client.log_dict(mv.run_id, record, ARTIFACT.format(decision_id=d.decision_id))
            client.set_model_version_tag(self.registry.name, str(d.model_version),
                                         DECIDED_TAG.format(action=d.action),
                                         f"{d.at.isoformat()} {d.reason}; {done}"[:MAX_TAG_CHARS])
        except Exception as e:  # noqa: BLE001 - the decision log below holds it whatever MLflow says
            log.error("decision %s not recorded in MLflow: %s", d.decision_id, e)
        path = self.settings.decision_log
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log.warning("monitor decision %s: %s of %s v%d (%s): %s", d.decision_id, d.action, d.use_case,
                    d.model_version, d.reason, done)
