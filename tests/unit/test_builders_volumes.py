"""pvc:// URIs become claim mounts: one volume per distinct claim at /mnt/pvc/<claim>, read-only
unless the pod writes there, on the head and worker pods of RayServices and RayJobs — and the
renderings still validate against KubeRay v1.7.0's CRDs. Bad claim names name the field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tests.unit.test_builders_rayjob import BASE_URI, make_job, rayjob_validator
from tests.unit.test_builders_rayjob import render as render_rayjob
from tests.unit.test_builders_rayservice import MEMBER, SETTINGS, rayservice_validator
from tests.unit.test_placement import make_md

from tramontane_operator.builders import build_rayservice
from tramontane_operator.builders.rayjob import build_rayjob, build_train_config
from tramontane_operator.builders.volumes import (
    ClaimUse,
    pod_volumes,
    pvc_claim,
    volume_name,
    with_volumes,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The head and worker pod specs of a RayService or RayJob."""
    spec = obj["spec"]
    cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def mounts_of(pod: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """claim -> (mount path, read-only) for every container of `pod`, checked consistent."""
    by_volume = {v["name"]: v["persistentVolumeClaim"] for v in pod.get("volumes") or []}
    out: dict[str, tuple[str, bool]] = {}
    for container in pod["containers"]:
        seen = {}
        for mount in container.get("volumeMounts") or []:
            source = by_volume[mount["name"]]
            read_only = bool(mount.get("readOnly"))
            assert bool(source.get("readOnly")) == read_only
            seen[source["claimName"]] = (mount["mountPath"], read_only)
        assert not out or seen == out, "every container mounts the same claims"
        out = seen
    return out


def test_one_mount_per_distinct_claim_read_only_unless_written() -> None:
    volumes = pod_volumes(
        [
            ClaimUse("a", "pvc://models/mistral"),
            ClaimUse("b", "s3://bucket/x"),  # not a claim: ignored
            ClaimUse("c", "pvc://data/train.jsonl"),
            ClaimUse("d", "pvc://data/valid.jsonl"),
            ClaimUse("e", "pvc://out/job", writes=True),
            ClaimUse("f", "pvc://models/adapter"),
        ]
    )
    pod = with_volumes({"containers": [{"name": "x"}, {"name": "y"}]}, volumes)
    assert mounts_of(pod) == {
        "models": ("/mnt/pvc/models", True),
        "data": ("/mnt/pvc/data", True),
        "out": ("/mnt/pvc/out", False),
    }
    assert [v["name"] for v in pod["volumes"]] == ["pvc-models", "pvc-data", "pvc-out"]


def test_a_claim_read_and_written_is_mounted_read_write() -> None:
    volumes = pod_volumes(
        [ClaimUse("t", "pvc://work/train.jsonl"), ClaimUse("o", "pvc://work/out", writes=True)]
    )
    assert volumes.mounts == [{"name": "pvc-work", "mountPath": "/mnt/pvc/work"}]
    assert volumes.volumes == [{"name": "pvc-work", "persistentVolumeClaim": {"claimName": "work"}}]


def test_no_claims_leave_the_pod_spec_as_it_was() -> None:
    pod = {"containers": [{"name": "x"}]}
    assert not pod_volumes([ClaimUse("a", "s3://b/c")])
    assert with_volumes(pod, pod_volumes([])) == pod


@pytest.mark.parametrize(
    ("claim", "other"),
    [
        ("a" * 70, "a" * 69 + "b"),  # truncated alike: the digest differs
        ("data.v2", "data-v2"),  # dots become dashes: the digest differs
        ("data-v2.example", "data-v2-example"),
        ("x" * 200 + ".y", "x" * 200 + "-y"),
    ],
)
def test_volume_names_are_dns_labels_and_distinct(claim: str, other: str) -> None:
    name = volume_name(claim)
    assert len(name) <= 63 and DNS_LABEL.match(name)
    assert name != volume_name(other)


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("pvc://Models/x", "not a valid PersistentVolumeClaim name"),
        ("pvc://my_claim/x", "not a valid PersistentVolumeClaim name"),
        ("pvc://-claim/x", "not a valid PersistentVolumeClaim name"),
        ("pvc://" + "a" * 254 + "/x", "not a valid PersistentVolumeClaim name"),
        ("pvc:///x", "not a pvc://<claim>/<path> URI"),
    ],
)
def test_a_bad_claim_is_an_error_naming_the_field(uri: str, why: str) -> None:
    with pytest.raises(ValueError, match=rf"^spec\.trainingFiles\[0\]\.uri: .*{why}"):
        pvc_claim(uri, "spec.trainingFiles[0].uri")


def test_rayservice_mounts_the_model_and_adapter_claims() -> None:
    md = make_md(
        {
            "model": {"source": "pvc://models/mistral-7b"},
            "adapters": [
                {"name": "a", "uri": "pvc://adapters/a"},
                {"name": "b", "fineTuneJobRef": {"name": "tune"}},
                {"name": "c", "uri": "s3://bucket/c"},
            ],
        }
    )
    obj = build_rayservice(md, MEMBER, 1, SETTINGS, "team", {"tune": "pvc://ft-out/tune/adapter"})
    assert rayservice_validator().validate(obj) == []
    for pod in pod_specs(obj):
        assert mounts_of(pod) == {
            "models": ("/mnt/pvc/models", True),
            "adapters": ("/mnt/pvc/adapters", True),
            "ft-out": ("/mnt/pvc/ft-out", True),
        }


def test_rayservice_without_claims_has_no_volumes() -> None:
    obj = build_rayservice(make_md(), MEMBER, 1, SETTINGS, "team")
    assert all("volumes" not in pod for pod in pod_specs(obj))


def test_rayservice_with_a_bad_claim_names_the_adapter() -> None:
    md = make_md({"adapters": [{"name": "a", "uri": "pvc://Bad_Claim/a"}]})
    with pytest.raises(ValueError, match=r"^spec\.adapters\[0\]\.uri: claim 'Bad_Claim'"):
        build_rayservice(md, MEMBER, 1, SETTINGS, "team")


def test_rayjob_mounts_datasets_read_only_and_the_output_read_write() -> None:
    job = make_job(
        {
            "trainingFiles": [{"uri": "pvc://datasets/train.jsonl"}],
            "validationFiles": [{"uri": "pvc://datasets/valid.jsonl"}],
            "output": {"uri": "pvc://checkpoints/tune"},
        }
    )
    config = build_train_config(job, "pvc://models/mistral")
    obj = build_rayjob(job, config, MEMBER, SETTINGS, "team")
    assert rayjob_validator().validate(obj) == []
    pods = pod_specs(obj)
    assert len(pods) == 2
    for pod in pods:
        assert mounts_of(pod) == {
            "models": ("/mnt/pvc/models", True),
            "datasets": ("/mnt/pvc/datasets", True),
            "checkpoints": ("/mnt/pvc/checkpoints", False),
        }


def test_rayjob_base_model_claim_from_a_model_deployment_names_the_reference() -> None:
    job = make_job({"baseModel": {"modelDeploymentRef": {"name": "chat"}}})
    config = build_train_config(job, "pvc://Bad/model")
    with pytest.raises(ValueError, match=r"^spec\.baseModel\.modelDeploymentRef"):
        build_rayjob(job, config, MEMBER, SETTINGS, "team")


def test_rayjob_without_claims_has_no_volumes() -> None:
    assert BASE_URI.startswith("hf://")
    assert all("volumes" not in pod for pod in pod_specs(render_rayjob(make_job())))
