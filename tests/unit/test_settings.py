"""Operator settings: one pydantic-settings model, the environment's only reader.

Every variable keeps its name and default; a bad value is an error naming the variable.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coursehub import settings as settings_mod
from coursehub.settings import Settings, SettingsError, env_name, load

# The names the Helm chart, the tests and the benchmarks set: they must not change. (New
# settings need no entry here; the reference drift test documents every field.)
VARIABLES = {
    "resolve_interval": ("COURSEHUB_RESOLVE_INTERVAL", 300),
    "debounce": ("COURSEHUB_DEBOUNCE_SECONDS", 0.3),
    "debounce_max": ("COURSEHUB_DEBOUNCE_MAX_SECONDS", 3),
    "resync_interval": ("COURSEHUB_RESYNC_SECONDS", 600),
    "rollout_poll": ("COURSEHUB_ROLLOUT_POLL_SECONDS", 2),
    "puller_relist": ("COURSEHUB_PULLER_RELIST_SECONDS", 60),
    "resolve_concurrency": ("COURSEHUB_RESOLVE_CONCURRENCY", 16),
    "aws_endpoint_url": ("COURSEHUB_AWS_ENDPOINT_URL", None),
    "insecure_registries": ("COURSEHUB_INSECURE_REGISTRIES", ()),
    "ecr_lifecycle": ("COURSEHUB_ECR_LIFECYCLE", True),
    "ecr_create_repositories": ("COURSEHUB_ECR_CREATE_REPOSITORIES", False),
    "ecr_untagged_days": ("COURSEHUB_ECR_UNTAGGED_DAYS", 7),
    "helm_timeout": ("COURSEHUB_HELM_TIMEOUT", "5m"),
    "metrics_port": ("COURSEHUB_METRICS_PORT", 8000),
    "json_logs": ("COURSEHUB_JSON_LOGS", False),
    "operator_image": ("COURSEHUB_OPERATOR_IMAGE", "ghcr.io/coursehub/coursehub-operator:0.1.0"),
}


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("COURSEHUB_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_names_and_defaults_are_kept(clean_env):
    s = load()
    for field, (var, default) in VARIABLES.items():
        assert env_name(field) == var
        assert getattr(s, field) == default


def test_every_variable_is_read(clean_env):
    values = {
        "COURSEHUB_RESOLVE_INTERVAL": "3",
        "COURSEHUB_DEBOUNCE_SECONDS": "0",
        "COURSEHUB_DEBOUNCE_MAX_SECONDS": "0",
        "COURSEHUB_RESYNC_SECONDS": "60",
        "COURSEHUB_ROLLOUT_POLL_SECONDS": "1",
        "COURSEHUB_PULLER_RELIST_SECONDS": "600",
        "COURSEHUB_RESOLVE_CONCURRENCY": "4",
        "COURSEHUB_AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "COURSEHUB_INSECURE_REGISTRIES": "registry.local:5000, mirror.local,",
        "COURSEHUB_ECR_LIFECYCLE": "false",
        "COURSEHUB_ECR_CREATE_REPOSITORIES": "yes",
        "COURSEHUB_ECR_UNTAGGED_DAYS": "14",
        "COURSEHUB_HELM_TIMEOUT": "1h30m",
        "COURSEHUB_METRICS_PORT": "0",
        "COURSEHUB_JSON_LOGS": "1",
        "COURSEHUB_OPERATOR_IMAGE": "registry.example.edu/coursehub-operator:dev",
    }
    for k, v in values.items():
        clean_env.setenv(k, v)
    # Other settings keep their defaults; each variable above lands in its field.
    assert load().model_dump(include=set(VARIABLES)) == {
        "resolve_interval": 3.0,
        "debounce": 0.0,
        "debounce_max": 0.0,
        "resync_interval": 60.0,
        "rollout_poll": 1.0,
        "puller_relist": 600.0,
        "resolve_concurrency": 4,
        "aws_endpoint_url": "http://127.0.0.1:5000",
        "insecure_registries": ("registry.local:5000", "mirror.local"),
        "ecr_lifecycle": False,
        "ecr_create_repositories": True,
        "ecr_untagged_days": 14,
        "helm_timeout": "1h30m",
        "metrics_port": 0,
        "json_logs": True,
        "operator_image": "registry.example.edu/coursehub-operator:dev",
    }


def test_empty_endpoint_means_aws(clean_env):
    clean_env.setenv("COURSEHUB_AWS_ENDPOINT_URL", "")
    assert load().aws_endpoint_url is None


def test_helm_is_an_executable_file(clean_env, tmp_path):
    helm = tmp_path / "helm"
    helm.write_text("#!/bin/sh\n")
    helm.chmod(0o755)
    clean_env.setenv("COURSEHUB_HELM", str(helm))
    assert load().helm == str(helm)
    helm.chmod(0o644)
    with pytest.raises(SettingsError, match=r"COURSEHUB_HELM: .*no executable file"):
        load()
    clean_env.setenv("COURSEHUB_HELM", "")
    assert load().helm is None


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("COURSEHUB_RESOLVE_INTERVAL", "five", "valid number"),
        ("COURSEHUB_RESOLVE_INTERVAL", "0", "greater than 0"),
        ("COURSEHUB_DEBOUNCE_SECONDS", "-1", "greater than or equal to 0"),
        ("COURSEHUB_RESOLVE_CONCURRENCY", "0", "greater than or equal to 1"),
        ("COURSEHUB_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("COURSEHUB_ECR_LIFECYCLE", "maybe", "valid boolean"),
        ("COURSEHUB_HELM_TIMEOUT", "5", "Go duration"),
        ("COURSEHUB_HELM", "/nonexistent/helm", "no executable file"),
    ],
)
def test_a_bad_value_names_the_variable(clean_env, var, value, words):
    clean_env.setenv(var, value)
    with pytest.raises(SettingsError) as e:
        load()
    line = next(ln.strip() for ln in str(e.value).splitlines() if var in ln)
    assert line.startswith(f"{var}: ")
    assert words in line
    assert repr(value) in line


def test_every_bad_variable_is_reported_at_once(clean_env):
    clean_env.setenv("COURSEHUB_RESYNC_SECONDS", "often")
    clean_env.setenv("COURSEHUB_JSON_LOGS", "perhaps")
    with pytest.raises(SettingsError) as e:
        load()
    message = str(e.value)
    assert "COURSEHUB_RESYNC_SECONDS: " in message
    assert "COURSEHUB_JSON_LOGS: " in message


def test_settings_are_frozen():
    with pytest.raises(ValueError):
        Settings().debounce = 1  # type: ignore[misc]


def test_current_reads_the_environment_once(clean_env):
    settings_mod.current.cache_clear()
    try:
        clean_env.setenv("COURSEHUB_RESOLVE_INTERVAL", "7")
        first = settings_mod.current()
        clean_env.setenv("COURSEHUB_RESOLVE_INTERVAL", "9")
        assert settings_mod.current() is first
        assert first.resolve_interval == 7
    finally:
        settings_mod.current.cache_clear()


def test_coursehub_run_with_a_bad_variable_exits_with_its_name(tmp_path):
    """The real command: the operator refuses to start and says which variable to fix."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COURSEHUB_")}
    env.update({"COURSEHUB_RESOLVE_INTERVAL": "soon", "KUBECONFIG": str(tmp_path / "none")})
    proc = subprocess.run(
        [sys.executable, "-m", "coursehub.cli", "run", "-n", "x", "--liveness", ""],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "COURSEHUB_RESOLVE_INTERVAL: Input should be a valid number" in proc.stderr
    assert "Traceback" not in proc.stderr
