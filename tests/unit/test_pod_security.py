"""Every pod we create passes the Pod Security Standards "restricted" profile.

First the checker (`pod_security`) itself: a restricted pod passes, each control fails on a pod
that breaks it (and only that control), the values the standard allows pass, and a default pod
passes Baseline but not Restricted — so a pass below cannot be vacuous. Then every pod template
the builders render (RayService head and workers, CPU and GPU, with claims; RayJob head,
workers and submitter, with pvc:// and az:// outputs; the dataset validation Job) and the Helm
chart's operator Deployment pass it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from tests.unit.pod_security import CONTROLS, template_violations, violations
from tests.unit.test_builders_rayjob import BASE_URI, JOBS, MEMBER, SETTINGS, make_job
from tests.unit.test_builders_rayservice import DEPLOYMENTS
from tests.unit.test_chart import AKS_VALUES, CI_VALUES, render
from tests.unit.test_placement import make_md

from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment
from tramontane_operator.builders import build_rayservice
from tramontane_operator.builders.rayjob import build_rayjob, build_train_config
from tramontane_operator.builders.security import WORKER_UID
from tramontane_operator.builders.validation_job import build_validation_job

Pod = dict[str, Any]

RESTRICTED_POD: Pod = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "initContainers": [{"name": "init", "image": "x", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
    "containers": [{"name": "main", "image": "x", "ports": [{"containerPort": 80}],
                    "securityContext": {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}}}],
    "volumes": [{"name": "tmp", "emptyDir": {}},
                {"name": "claim", "persistentVolumeClaim": {"claimName": "c"}},
                {"name": "token", "projected": {"sources": []}}],
}  # fmt: skip


def pod_with(change: Callable[[Pod], object]) -> Pod:
    pod = copy.deepcopy(RESTRICTED_POD)
    change(pod)
    return pod


def main(pod: Pod) -> dict[str, Any]:
    sc: dict[str, Any] = pod["containers"][0]["securityContext"]
    return sc


def init(pod: Pod) -> dict[str, Any]:
    sc: dict[str, Any] = pod["initContainers"][0]["securityContext"]
    return sc


def psc(pod: Pod) -> dict[str, Any]:
    sc: dict[str, Any] = pod["securityContext"]
    return sc


# (control that must fail, the change that breaks it, annotations)
BAD: list[tuple[str, Callable[[Pod], object], dict[str, str]]] = [
    ("hostProcess", lambda p: psc(p).update(windowsOptions={"hostProcess": True}), {}),
    ("hostProcess", lambda p: init(p).update(windowsOptions={"hostProcess": True}), {}),
    ("hostNamespaces", lambda p: p.update(hostNetwork=True), {}),
    ("hostNamespaces", lambda p: p.update(hostPID=True), {}),
    ("hostNamespaces", lambda p: p.update(hostIPC=True), {}),
    ("privileged", lambda p: main(p).update(privileged=True), {}),
    ("privileged", lambda p: p.update(ephemeralContainers=[{"name": "debug", "securityContext": {
        "privileged": True, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]}}}]), {}),
    ("hostPorts", lambda p: p["containers"][0]["ports"][0].update(hostPort=8080), {}),
    ("appArmor", lambda p: psc(p).update(appArmorProfile={"type": "Unconfined"}), {}),
    ("appArmor", lambda p: main(p).update(appArmorProfile={"type": "Unconfined"}), {}),
    ("appArmor", lambda p: None,
     {"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}),
    ("seLinux", lambda p: psc(p).update(seLinuxOptions={"type": "spc_t"}), {}),
    ("seLinux", lambda p: main(p).update(seLinuxOptions={"user": "system_u"}), {}),
    ("seLinux", lambda p: init(p).update(seLinuxOptions={"role": "system_r"}), {}),
    ("procMount", lambda p: main(p).update(procMount="Unmasked"), {}),
    ("sysctls", lambda p: psc(p).update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), {}),
    ("volumeTypes", lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}), {}),
    ("volumeTypes", lambda p: p["volumes"].append({"name": "g", "gitRepo": {"repository": "r"}}), {}),
    ("allowPrivilegeEscalation", lambda p: main(p).pop("allowPrivilegeEscalation"), {}),
    ("allowPrivilegeEscalation", lambda p: init(p).update(allowPrivilegeEscalation=True), {}),
    ("runAsNonRoot", lambda p: psc(p).pop("runAsNonRoot"), {}),
    ("runAsNonRoot", lambda p: psc(p).update(runAsNonRoot=False), {}),
    ("runAsNonRoot", lambda p: init(p).update(runAsNonRoot=False), {}),
    ("runAsUser", lambda p: psc(p).update(runAsUser=0), {}),
    ("runAsUser", lambda p: main(p).update(runAsUser=0), {}),
    ("seccomp_restricted", lambda p: psc(p).pop("seccompProfile"), {}),
    ("capabilities_restricted", lambda p: main(p).pop("capabilities"), {}),
    ("capabilities_restricted", lambda p: init(p)["capabilities"].update(add=["CHOWN"]), {}),
]  # fmt: skip
# Changes that break a Baseline control and, with it, the Restricted one that tightens it.
BAD_TWICE: list[tuple[str, str, Callable[[Pod], object]]] = [
    ("hostPathVolumes", "volumeTypes",
     lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
    ("seccomp_baseline", "seccomp_restricted",
     lambda p: main(p).update(seccompProfile={"type": "Unconfined"})),
    ("capabilities_baseline", "capabilities_restricted",
     lambda p: main(p)["capabilities"].update(add=["SYS_ADMIN"])),
    ("capabilities_baseline", "capabilities_restricted",
     lambda p: init(p)["capabilities"].update(add=["NET_RAW", "SYS_PTRACE"])),
]  # fmt: skip
# Values the standard allows: none of these may fail.
ALLOWED: list[tuple[Callable[[Pod], object], dict[str, str]]] = [
    (lambda p: main(p)["capabilities"].update(add=["NET_BIND_SERVICE"]), {}),
    (lambda p: p["containers"][0]["ports"][0].update(hostPort=0), {}),
    (lambda p: main(p).update(procMount="Default"), {}),
    (lambda p: psc(p).update(sysctls=[{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]), {}),
    (lambda p: psc(p).update(seLinuxOptions={"type": "container_init_t", "level": "s0:c1"}), {}),
    (lambda p: psc(p).update(appArmorProfile={"type": "RuntimeDefault"}), {}),
    (lambda p: main(p).update(appArmorProfile={"type": "Localhost", "localhostProfile": "x"}), {}),
    (lambda p: None, {"container.apparmor.security.beta.kubernetes.io/main": "runtime/default"}),
    (lambda p: None, {"container.apparmor.security.beta.kubernetes.io/main": "localhost/prof"}),
    (lambda p: p["volumes"].extend([{"name": "cm", "configMap": {"name": "c"}},
                                   {"name": "d", "downwardAPI": {"items": []}},
                                   {"name": "s", "secret": {"secretName": "s"}},
                                   {"name": "csi", "csi": {"driver": "d"}},
                                   {"name": "e", "ephemeral": {"volumeClaimTemplate": {}}}]), {}),
    # runAsNonRoot and seccomp set on every container instead of the pod.
    (lambda p: [psc(p).pop("runAsNonRoot"), main(p).update(runAsNonRoot=True),
                init(p).update(runAsNonRoot=True)], {}),
    (lambda p: [psc(p).pop("seccompProfile"),
                main(p).update(seccompProfile={"type": "Localhost", "localhostProfile": "p"}),
                init(p).update(seccompProfile={"type": "RuntimeDefault"})], {}),
    (lambda p: psc(p).pop("runAsUser"), {}),  # the image's non-root user, runAsNonRoot checks
]  # fmt: skip


def test_the_reference_pod_is_restricted() -> None:
    assert violations(RESTRICTED_POD) == {}


@pytest.mark.parametrize(("control", "change", "annotations"), BAD)
def test_each_control_fails_on_a_pod_that_breaks_it(
    control: str, change: Callable[[Pod], object], annotations: dict[str, str]
) -> None:
    assert set(violations(pod_with(change), annotations)) == {control}


@pytest.mark.parametrize(("baseline", "restricted", "change"), BAD_TWICE)
def test_some_changes_break_a_baseline_control_and_its_restricted_twin(
    baseline: str, restricted: str, change: Callable[[Pod], object]
) -> None:
    pod = pod_with(change)
    assert set(violations(pod, level="baseline")) == {baseline}
    assert set(violations(pod)) == {baseline, restricted}


def test_every_control_has_a_failing_example() -> None:
    tested = {c for c, _, _ in BAD} | {c for b, r, _ in BAD_TWICE for c in (b, r)}
    assert tested == {control_id for control_id, _, _ in CONTROLS}


@pytest.mark.parametrize(("change", "annotations"), ALLOWED)
def test_allowed_values_pass(change: Callable[[Pod], object], annotations: dict[str, str]) -> None:
    assert violations(pod_with(change), annotations) == {}


def test_a_default_pod_is_baseline_but_not_restricted() -> None:
    pod = {
        "containers": [{"name": "app", "image": "x"}],
        "volumes": [{"name": "t", "emptyDir": {}}],
    }
    assert violations(pod, level="baseline") == {}
    assert set(violations(pod)) == {
        "allowPrivilegeEscalation", "runAsNonRoot", "seccomp_restricted", "capabilities_restricted"
    }  # fmt: skip


# What we render ----------------------------------------------------------------------------


def pod_templates(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every PodTemplateSpec of a RayService, RayJob, Job or Deployment, named by its path."""
    spec = obj["spec"]
    if obj["kind"] in ("Job", "Deployment"):
        return {"spec.template": spec["template"]}
    key = "rayClusterConfig" if obj["kind"] == "RayService" else "rayClusterSpec"
    cluster = spec[key]
    out = {f"spec.{key}.headGroupSpec.template": cluster["headGroupSpec"]["template"]}
    for i, group in enumerate(cluster["workerGroupSpecs"]):
        out[f"spec.{key}.workerGroupSpecs[{i}].template"] = group["template"]
    if "submitterPodTemplate" in spec:
        out["spec.submitterPodTemplate"] = spec["submitterPodTemplate"]
    return out


def assert_restricted(obj: dict[str, Any], expected: set[str]) -> None:
    templates = pod_templates(obj)
    assert set(templates) == expected
    for path, template in templates.items():
        assert template_violations(template) == {}, f"{obj['kind']} {path}"
        # The uid is the worker image's non-root user (Ray's `ray`, as the helper says).
        assert template["spec"]["securityContext"]["runAsUser"] == WORKER_UID


RAYSERVICE_TEMPLATES = {
    "spec.rayClusterConfig.headGroupSpec.template",
    "spec.rayClusterConfig.workerGroupSpecs[0].template",
}
RAYJOB_TEMPLATES = {
    "spec.rayClusterSpec.headGroupSpec.template",
    "spec.rayClusterSpec.workerGroupSpecs[0].template",
    "spec.submitterPodTemplate",
}
CLAIMS_MD = make_md(
    {
        "model": {"source": "pvc://models/mistral-7b"},
        "adapters": [
            {"name": "a", "uri": "pvc://adapters/a"},
            {"name": "b", "fineTuneJobRef": {"name": "tune"}},
            {"name": "c", "uri": "az://account/container/c"},
        ],
    }
)
MODEL_DEPLOYMENTS: dict[str, ModelDeployment] = {**DEPLOYMENTS, "claims": CLAIMS_MD}
PVC_DATA = {"trainingFiles": [{"uri": "pvc://datasets/train.jsonl"}],
            "validationFiles": [{"uri": "pvc://datasets/valid.jsonl"}]}  # fmt: skip
FINE_TUNE_JOBS: dict[str, FineTuneJob] = {
    **JOBS,
    "pvc-output": make_job({**PVC_DATA, "output": {"uri": "pvc://checkpoints/tune"}}),
    "az-output": make_job({"output": {"uri": "az://account/container/tune"}}),
}


@pytest.mark.parametrize("name", sorted(MODEL_DEPLOYMENTS))
def test_rayservice_pods_are_restricted(name: str) -> None:
    md = MODEL_DEPLOYMENTS[name]
    obj = build_rayservice(md, MEMBER, 2, SETTINGS, "team", {"tune": "pvc://ft-out/tune/a"})
    assert_restricted(obj, RAYSERVICE_TEMPLATES)


def test_the_cases_cover_gpu_cpu_and_claims() -> None:
    """The parametrisation above is not vacuous: GPU and CPU workers, and mounted claims."""
    workers = {
        name: build_rayservice(md, MEMBER, 1, SETTINGS, "t", {"tune": "pvc://ft-out/tune/a"})[
            "spec"
        ]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
        for name, md in MODEL_DEPLOYMENTS.items()
    }
    limits = [w["containers"][0]["resources"]["limits"] for w in workers.values()]
    assert any("nvidia.com/gpu" in lim for lim in limits)
    assert any("nvidia.com/gpu" not in lim for lim in limits)
    assert len(workers["claims"]["volumes"]) == 3


@pytest.mark.parametrize("name", sorted(FINE_TUNE_JOBS))
def test_rayjob_pods_are_restricted(name: str) -> None:
    job = FINE_TUNE_JOBS[name]
    obj = build_rayjob(job, build_train_config(job, BASE_URI), MEMBER, SETTINGS, "team")
    assert_restricted(obj, RAYJOB_TEMPLATES)


def test_the_writable_output_claim_is_group_owned_by_the_pod() -> None:
    """fsGroup is set where a pod writes a claim, so the non-root uid can write there."""
    job = FINE_TUNE_JOBS["pvc-output"]
    obj = build_rayjob(job, build_train_config(job, BASE_URI), MEMBER, SETTINGS, "team")
    head = obj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]} == {
        "checkpoints",
        "datasets",
    }
    assert head["securityContext"]["fsGroup"] == head["securityContext"]["runAsGroup"]


def test_validation_job_pod_is_restricted() -> None:
    job = make_job({**PVC_DATA, "output": {"uri": "pvc://checkpoints/tune"}})
    obj = build_validation_job(job, MEMBER, SETTINGS, "team")
    assert obj["spec"]["template"]["spec"]["volumes"]  # the dataset claims are mounted
    assert_restricted(obj, {"spec.template"})


@pytest.mark.parametrize("values", [(), *((p,) for p in [*CI_VALUES, AKS_VALUES])],
                         ids=lambda v: "defaults" if not v else v[0].stem)  # fmt: skip
def test_chart_pods_are_restricted(helm: str, values: tuple[Any, ...]) -> None:
    """The operator's and the router's pods."""
    docs = render(helm, values)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert sorted(d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments) == [
        "operator",
        "router",
    ]
    for deployment in deployments:
        for path, template in pod_templates(deployment).items():
            name = deployment["metadata"]["name"]
            assert template_violations(template) == {}, f"Deployment {name} {path}"
