"""Operator settings from the environment: values, defaults, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tramontane_operator import settings as settings_module
from tramontane_operator.settings import OperatorSettings


def test_environment_overrides_the_defaults() -> None:
    env = {
        "TRAMONTANE_CLUSTER_NAME": "hub-weu",
        "TRAMONTANE_RESYNC_INTERVAL": "120",
        "TRAMONTANE_RECONCILE_WORKERS": "8",
    }
    settings = OperatorSettings.from_env(env)
    assert settings.cluster_name == "hub-weu"
    assert settings.resync_interval_s == 120.0
    assert settings.reconcile_workers == 8
    assert OperatorSettings.from_env({}).reconcile_workers == 32


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("TRAMONTANE_PROBE_INTERVAL", "soon", "expected seconds"),
        ("TRAMONTANE_RECONCILE_WORKERS", "0", "expected a whole number >= 1"),
        ("TRAMONTANE_RECONCILE_WORKERS", "4.5", "expected a whole number >= 1"),
        ("TRAMONTANE_WEBHOOK_PORT", "https", r"expected a port number \(0 disables\)"),
        ("TRAMONTANE_WEBHOOK_PORT", "70000", r"expected a port number \(0 disables\)"),
        ("TRAMONTANE_WEBHOOK_CERT_MANAGER", "maybe", "expected true or false"),
        ("TRAMONTANE_WEBHOOK_TENANT_REQUIRED", "sometimes", "expected one of auto, always, never"),
    ],
)
def test_a_bad_value_names_the_variable(var: str, value: str, expected: str) -> None:
    with pytest.raises(ValueError, match=f"{var}: {expected}, got '{value}'"):
        OperatorSettings.from_env({var: value})


def test_webhook_from_the_pod_environment() -> None:
    env = {
        "POD_NAMESPACE": "tramontane-system",
        "TRAMONTANE_WEBHOOK_SERVICE": "t-webhook",
        "TRAMONTANE_WEBHOOK_SECRET": "t-webhook-tls",
        "TRAMONTANE_WEBHOOK_CONFIGURATION": "t",
        "TRAMONTANE_WEBHOOK_CERT_MANAGER": "true",
        "TRAMONTANE_WEBHOOK_TENANT_REQUIRED": "always",
    }
    settings = OperatorSettings.from_env(env)
    assert settings.webhook_port == 9443
    assert settings.webhook_service_namespace() == "tramontane-system"
    assert (settings.webhook_service, settings.webhook_secret) == ("t-webhook", "t-webhook-tls")
    assert settings.webhook_configuration == "t"
    assert settings.webhook_cert_manager is True
    assert settings.webhook_tenant_required == "always"
    assert OperatorSettings.from_env({"TRAMONTANE_WEBHOOK_PORT": "0"}).webhook_port is None


def test_webhook_without_a_namespace_says_how_to_set_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    with pytest.raises(ValueError, match="TRAMONTANE_WEBHOOK_PORT=0"):
        OperatorSettings.from_env({}).webhook_service_namespace()


def test_leader_election_from_the_pod_environment() -> None:
    env = {
        "POD_NAMESPACE": "tramontane-system",
        "POD_NAME": "tramontane-7d9f-abcde",
        "TRAMONTANE_LEADER_ELECTION_LEASE_DURATION": "30",
        "TRAMONTANE_LEADER_ELECTION_RENEW_DEADLINE": "20",
    }
    config = OperatorSettings.from_env(env).leader_election_config()
    assert config is not None
    assert (config.namespace, config.name) == ("tramontane-system", "tramontane-operator")
    assert config.identity == "tramontane-7d9f-abcde"
    assert (config.lease_duration_s, config.renew_deadline_s, config.retry_period_s) == (
        30.0,
        20.0,
        2.0,
    )
    explicit = OperatorSettings.from_env(
        {**env, "TRAMONTANE_LEADER_ELECTION_NAMESPACE": "ops", "TRAMONTANE_LEADER_ELECTION_ID": "x"}
    ).leader_election_config()
    assert explicit is not None and (explicit.namespace, explicit.name) == ("ops", "x")
    off = OperatorSettings.from_env({**env, "TRAMONTANE_LEADER_ELECTION": "False"})
    assert not off.leader_election and off.leader_election_config() is None


def test_leader_identity_outside_a_pod_is_unique_per_process() -> None:
    one, two = OperatorSettings.from_env({}), OperatorSettings.from_env({})
    assert one.leader_election_identity != two.leader_election_identity
    assert one.leader_election  # on by default


def test_leader_election_without_a_namespace_says_how_to_set_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    with pytest.raises(ValueError, match="set POD_NAMESPACE"):
        OperatorSettings.from_env({}).leader_election_config()
    in_pod = tmp_path / "namespace"
    in_pod.write_text("tramontane-system\n")
    monkeypatch.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", in_pod)
    config = OperatorSettings.from_env({}).leader_election_config()
    assert config is not None and config.namespace == "tramontane-system"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"TRAMONTANE_LEADER_ELECTION": "maybe"},
            "TRAMONTANE_LEADER_ELECTION: expected true or false, got 'maybe'",
        ),
        (
            {"TRAMONTANE_LEADER_ELECTION_RETRY_PERIOD": "2s"},
            "TRAMONTANE_LEADER_ELECTION_RETRY_PERIOD: expected seconds, got '2s'",
        ),
        (
            {"TRAMONTANE_LEADER_ELECTION_RENEW_DEADLINE": "20"},
            r"lease duration \(15.0 s\) must be greater than the renew deadline \(20.0 s\)",
        ),
        (
            {"TRAMONTANE_LEADER_ELECTION_RETRY_PERIOD": "9"},
            r"renew deadline \(10.0 s\) must be greater than 1.2 x the retry period",
        ),
    ],
)
def test_bad_leader_election_settings_are_refused(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        OperatorSettings.from_env(env)
    # Timings only matter with leader election on.
    if "TRAMONTANE_LEADER_ELECTION" not in env and "seconds" not in expected:
        assert not OperatorSettings.from_env(
            {**env, "TRAMONTANE_LEADER_ELECTION": "false"}
        ).leader_election


def test_local_mode_is_off_unless_turned_on_and_parsed_strictly() -> None:
    assert not OperatorSettings.from_env({}).local_mode
    assert not OperatorSettings().local_mode
    for value, expected in (("true", True), (" TRUE ", True), ("1", True), ("no", False)):
        assert OperatorSettings.from_env({"TRAMONTANE_LOCAL_MODE": value}).local_mode is expected
    with pytest.raises(ValueError, match="TRAMONTANE_LOCAL_MODE: expected true or false, got 'y'"):
        OperatorSettings.from_env({"TRAMONTANE_LOCAL_MODE": "y"})


def test_worker_pod_settings_from_the_environment_reach_the_builders() -> None:
    """What the chart's `workers.*` values become (env -> settings -> BuildSettings)."""
    env = {
        "TRAMONTANE_WORKER_IMAGE": "reg.azurecr.io/tramontane-worker:1",
        "TRAMONTANE_GPU_WORKER_IMAGE": "reg.azurecr.io/tramontane-worker-gpu:1",
        "TRAMONTANE_GPU_NODE_SELECTOR": '{"kubernetes.azure.com/accelerator": "nvidia"}',
        "TRAMONTANE_GPU_TOLERATIONS": '[{"key": "sku", "operator": "Equal", "value": "gpu",'
        ' "effect": "NoSchedule"}]',
        "TRAMONTANE_WORKER_SERVICE_ACCOUNT": "tramontane-worker",
        "TRAMONTANE_WORKER_POD_LABELS": '{"azure.workload.identity/use": "true"}',
    }
    build = OperatorSettings.from_env(env).build_settings()
    assert build.worker_image == "reg.azurecr.io/tramontane-worker:1"
    assert build.image_for(0) == "reg.azurecr.io/tramontane-worker:1"
    assert build.image_for(1) == "reg.azurecr.io/tramontane-worker-gpu:1"
    assert build.gpu_node_selector == {"kubernetes.azure.com/accelerator": "nvidia"}
    assert build.gpu_tolerations == (
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    )
    assert build.worker_service_account == "tramontane-worker"
    assert build.worker_pod_labels == {"azure.workload.identity/use": "true"}
    unset = OperatorSettings.from_env({}).build_settings()
    assert unset.image_for(1) == unset.worker_image  # no GPU image: the one image
    assert (unset.gpu_node_selector, unset.gpu_tolerations) == ({}, ())
    assert (unset.worker_service_account, unset.worker_pod_labels) == (None, {})
    assert unset.worker_env == ()


def test_worker_env_from_the_environment_reaches_the_builders_in_order() -> None:
    env = {
        "TRAMONTANE_WORKER_ENV": '[{"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": "acct"},'
        ' {"name": "HF_HUB_OFFLINE", "value": "1"}]'
    }
    assert OperatorSettings.from_env(env).build_settings().worker_env == (
        {"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": "acct"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    )
    assert OperatorSettings.from_env({"TRAMONTANE_WORKER_ENV": ""}).worker_env == ()


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("TRAMONTANE_GPU_NODE_SELECTOR", "gpu=true", ": not JSON"),
        ("TRAMONTANE_GPU_NODE_SELECTOR", '["gpu"]', ": expected a JSON object"),
        ("TRAMONTANE_GPU_NODE_SELECTOR", '{"gpu": true}', r": values must be strings \(not gpu\)"),
        ("TRAMONTANE_GPU_TOLERATIONS", '{"key": "sku"}', ": expected a JSON list"),
        ("TRAMONTANE_GPU_TOLERATIONS", '[{"kee": "sku"}]', r"\[0\]: expected a toleration"),
        ("TRAMONTANE_WORKER_POD_LABELS", "{", ": not JSON"),
        ("TRAMONTANE_WORKER_ENV", "AZURE_STORAGE_ACCOUNT_NAME=acct", ": not JSON"),
        ("TRAMONTANE_WORKER_ENV", '{"name": "A", "value": "b"}', ": expected a JSON list"),
        ("TRAMONTANE_WORKER_ENV", '[{"name": "A"}]', r"\[0\]: expected \{"),
        ("TRAMONTANE_WORKER_ENV", '[{"name": "A", "value": 1}]', r"\[0\]: expected \{"),
        ("TRAMONTANE_WORKER_ENV", '[{"name": "A", "value": "1", "valueFrom": {}}]', r"\[0\]: "),
        ("TRAMONTANE_WORKER_ENV", '[{"name": "1A", "value": "b"}]', r"\[0\]: '1A' is not a valid"),
        (
            "TRAMONTANE_WORKER_ENV",
            '[{"name": "A", "value": "b"}, {"name": "A", "value": "c"}]',
            r"\[1\]: 'A' is set twice",
        ),
    ],
)
def test_bad_worker_pod_settings_name_the_variable(var: str, value: str, expected: str) -> None:
    with pytest.raises(ValueError, match=f"^{var}{expected}"):
        OperatorSettings.from_env({var: value})


def test_kubeconfig_secrets_are_read_in_the_pods_namespace_only() -> None:
    """The chart lets the operator read Secrets in its own namespace alone; outside a pod
    (development against a kubeconfig) nothing is restricted."""
    assert OperatorSettings.from_env({}).kubeconfig_secret_namespace is None
    in_pod = OperatorSettings.from_env({"POD_NAMESPACE": "tramontane-system"})
    assert in_pod.kubeconfig_secret_namespace == "tramontane-system"
    chosen = OperatorSettings.from_env(
        {"POD_NAMESPACE": "tramontane-system", "TRAMONTANE_KUBECONFIG_SECRET_NAMESPACE": "keys"}
    )
    assert chosen.kubeconfig_secret_namespace == "keys"


def test_key_namespaces_from_the_environment() -> None:
    assert OperatorSettings.from_env({}).key_namespaces is None
    env = {"TRAMONTANE_KEY_NAMESPACES": "tramontane-keys, team-b-keys,"}
    assert OperatorSettings.from_env(env).key_namespaces == ("tramontane-keys", "team-b-keys")
    assert OperatorSettings.from_env({"TRAMONTANE_KEY_NAMESPACES": ""}).key_namespaces == ()
