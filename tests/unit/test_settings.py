"""Operator settings from the environment: values, defaults, and errors naming the variable."""

from __future__ import annotations

import pytest

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
    ],
)
def test_a_bad_value_names_the_variable(var: str, value: str, expected: str) -> None:
    with pytest.raises(ValueError, match=f"{var}: {expected}, got '{value}'"):
        OperatorSettings.from_env({var: value})
