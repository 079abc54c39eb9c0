"""In-cluster credential loading (the 401 reload itself is tested on the real API server in e2e)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from coursehub.kube import service_account_credentials

CA = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture
def sa_dir(tmp_path):
    if not CA.exists():
        pytest.skip("no system CA bundle to stand in for the cluster CA")
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "ca.crt").write_bytes(CA.read_bytes())
    return tmp_path


def test_outside_a_cluster_there_are_none(sa_dir, tmp_path):
    assert service_account_credentials(sa_dir, {}) is None
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert service_account_credentials(tmp_path / "missing", env) is None


def test_token_and_address(sa_dir):
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    creds = service_account_credentials(sa_dir, env)
    assert creds is not None
    assert creds.host == "https://10.0.0.1:443"
    assert creds.headers == {"Authorization": "Bearer tok-1"}
    # Each load reads the file again: the kubelet rotates it.
    (sa_dir / "token").write_text("tok-2")
    assert service_account_credentials(sa_dir, env).headers == {"Authorization": "Bearer tok-2"}


def test_ipv6_service_address_is_bracketed(sa_dir):
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert service_account_credentials(sa_dir, env).host == "https://[fd00::1]:443"
