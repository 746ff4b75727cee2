"""The deployment manifests mirror the exit-code contract of runner/exit_codes.py.

k8s/job.yaml and the Helm chart (k8s/chart) carry a Job podFailurePolicy whose FailJob list
must be exactly the codes a person must act on, and whose retry (Count) list exactly the
retryable ones. A fleet's Indexed Job (k8s/fleet-job.yaml, the chart with fleet.enabled) has
FailIndex where the others have FailJob: a shard that needs a person fails alone. The chart
keeps both lists in one place, values.yaml `exitCodes`; when `helm` is on PATH (or HELM names
it), the rendered Jobs are checked as well.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from runner.exit_codes import ExitCode

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CHART = K8S / "chart"
CONTAINER = "migrate"

NON_RETRYABLE = sorted(int(c) for c in ExitCode if c is not ExitCode.OK and not c.retryable)
RETRYABLE = sorted(int(c) for c in ExitCode if c.retryable)

Doc = Mapping[str, Any]


def _documents(text: str) -> Iterator[Doc]:
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, Mapping):
            yield cast(Doc, doc)


def _jobs(text: str) -> list[Doc]:
    return [d for d in _documents(text) if d.get("kind") == "Job"]


def _codes(value: object) -> list[int]:
    assert isinstance(value, list), value
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in value), value
    return [int(v) for v in value]


def _rules(job: Doc) -> list[Doc]:
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert isinstance(rules, list)
    return [cast(Doc, r) for r in rules]


def _exit_code_rule(job: Doc, action: str) -> tuple[int, list[int]]:
    """Position and values of the one onExitCodes rule with this action."""
    found = [
        (i, r["onExitCodes"])
        for i, r in enumerate(_rules(job))
        if r.get("action") == action and "onExitCodes" in r
    ]
    assert len(found) == 1, f"expected one {action} onExitCodes rule, found {len(found)}"
    index, on = found[0]
    assert on["containerName"] == CONTAINER
    assert on["operator"] == "In"
    return index, _codes(on["values"])


def _assert_job_mirrors_enum(job: Doc) -> None:
    indexed = job["spec"].get("completionMode") == "Indexed"
    fail_at, fail_codes = _exit_code_rule(job, "FailIndex" if indexed else "FailJob")
    count_at, retry_codes = _exit_code_rule(job, "Count")
    assert fail_codes == NON_RETRYABLE
    assert retry_codes == RETRYABLE
    # Kubernetes requires each list in ascending order, without duplicates.
    assert fail_codes == sorted(set(fail_codes))
    assert retry_codes == sorted(set(retry_codes))
    # Disruptions (eviction, preemption, drain) end in SIGTERM, exit 143: the Ignore rule
    # must come before the Count rule so that they do not use up backoffLimit.
    ignore_at = [
        i
        for i, r in enumerate(_rules(job))
        if r.get("action") == "Ignore"
        and any(c.get("type") == "DisruptionTarget" for c in r.get("onPodConditions", []))
    ]
    assert ignore_at, "no Ignore rule on the DisruptionTarget pod condition"
    assert fail_at < ignore_at[0] < count_at

    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    containers = {c["name"]: c for c in pod["containers"]}
    migrate = containers[CONTAINER]
    assert migrate["terminationMessagePolicy"] == "FallbackToLogsOnError"
    security = migrate["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int)
    assert pod["securityContext"]["runAsUser"] != 0


def test_enum_partition_is_complete() -> None:
    assert set(NON_RETRYABLE) | set(RETRYABLE) | {0} == {int(c) for c in ExitCode}
    assert not set(NON_RETRYABLE) & set(RETRYABLE)


def test_plain_job_mirrors_exit_codes() -> None:
    jobs = _jobs((K8S / "job.yaml").read_text(encoding="utf-8"))
    assert len(jobs) == 1
    _assert_job_mirrors_enum(jobs[0])


def _env(job: Doc) -> dict[str, str]:
    (migrate,) = [
        c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER
    ]
    return {e["name"]: e.get("value") for e in migrate.get("env", [])}


def _assert_indexed_job_of_shards(job: Doc) -> None:
    """One completion per shard: SHARDS equals completions, each index retried on its own;
    JOB_COMPLETION_INDEX is Kubernetes' to set."""
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    env = _env(job)
    assert int(env["SHARDS"]) == spec["completions"]
    assert "JOB_COMPLETION_INDEX" not in env
    assert "backoffLimit" not in spec
    assert isinstance(spec["backoffLimitPerIndex"], int)
    assert 0 <= spec["maxFailedIndexes"] <= spec["completions"]
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert ("TARGETS_FILE" in env) != ("TARGETS_QUERY" in env)


def test_fleet_job_is_an_indexed_job_of_shards(tmp_path: Path) -> None:
    from runner import fleet
    from runner.config import from_env

    jobs = _jobs((K8S / "fleet-job.yaml").read_text(encoding="utf-8"))
    assert len(jobs) == 1
    _assert_job_mirrors_enum(jobs[0])
    _assert_indexed_job_of_shards(jobs[0])
    # The example targets parse as the runner reads them, mounted where TARGETS_FILE says.
    (example,) = _documents((K8S / "fleet-targets.example.yaml").read_text(encoding="utf-8"))
    pod = jobs[0]["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "targets"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "targets"]
    assert volume["configMap"]["name"] == example["metadata"]["name"]
    (item,) = volume["configMap"]["items"]
    assert _env(jobs[0])["TARGETS_FILE"] == f"{mount['mountPath']}/{item['path']}"
    targets = tmp_path / item["path"]
    targets.write_text(example["data"][item["key"]], encoding="utf-8")
    settings = from_env({"DATABASE_URL": "postgresql://app@db/app", "TARGETS_FILE": str(targets)})
    assert [t.kind for t in fleet.targets_from_file(targets, settings)] == [
        "schema",
        "schema",
        "schema",
        "database",
    ]


def test_plain_deployment_init_container_only_awaits_the_schema() -> None:
    docs = list(_documents((K8S / "deployment.yaml").read_text(encoding="utf-8")))
    (deployment,) = [d for d in docs if d.get("kind") == "Deployment"]
    inits = deployment["spec"]["template"]["spec"]["initContainers"]
    assert [c["args"] for c in inits] == [["await"]]


def test_chart_values_hold_the_exit_codes() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(values, dict)
    assert _codes(values["exitCodes"]["failJob"]) == NON_RETRYABLE
    assert _codes(values["exitCodes"]["retry"]) == RETRYABLE


def test_chart_job_template_takes_the_lists_from_values() -> None:
    template = (CHART / "templates" / "job.yaml").read_text(encoding="utf-8")
    assert ".Values.exitCodes.failJob" in template
    assert ".Values.exitCodes.retry" in template
    # No second copy of a list in the template itself.
    assert re.search(r"\[\s*\d+\s*,", template) is None
    assert re.search(r"^\s*-\s*\d+\s*$", template, re.MULTILINE) is None


def _helm() -> str | None:
    return os.environ.get("HELM") or shutil.which("helm")


CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


@pytest.mark.parametrize("values_file", CI_VALUES)
def test_rendered_chart_job_mirrors_exit_codes(values_file: str) -> None:
    helm = _helm()
    if helm is None:
        pytest.skip("helm not on PATH (set HELM=/path/to/helm to render the chart)")
    rendered = subprocess.run(
        [helm, "template", "t", str(CHART), "--values", str(CHART / "ci" / values_file)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    jobs = _jobs(rendered)
    assert len(jobs) == 1
    _assert_job_mirrors_enum(jobs[0])
    values = yaml.safe_load((CHART / "ci" / values_file).read_text(encoding="utf-8"))
    if values.get("fleet", {}).get("enabled"):
        _assert_indexed_job_of_shards(jobs[0])
        assert jobs[0]["spec"]["completions"] == values["fleet"]["shards"]
    else:
        assert "completionMode" not in jobs[0]["spec"]
    for deployment in (d for d in _documents(rendered) if d.get("kind") == "Deployment"):
        inits = deployment["spec"]["template"]["spec"]["initContainers"]
        assert all(c["args"] == ["await"] for c in inits)
