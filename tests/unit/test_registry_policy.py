"""The resolver's policy (pure): realms, private addresses, settings. The servers that try to
get around it are in tests/integration/test_registry_hostile.py."""

import pytest

from coursehub.registry import RegistryPolicy
from coursehub.registry.policy import is_global_address, token_host_pairs
from coursehub.settings import Settings


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.2", False),
        ("10.1.2.3", False),
        ("172.17.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.1.1", False),  # carrier-grade NAT / some pod networks
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
    ],
)
def test_global_addresses(address, public):
    assert is_global_address(address) is public


def test_explicitly_configured_hosts_may_be_private():
    policy = RegistryPolicy(
        insecure_registries=("registry.local",),
        private_registries=("harbor.internal:8443",),
        token_hosts={"harbor.internal:8443": ("auth.internal",)},
    )
    assert policy.may_be_private("registry.local", 80)
    assert policy.may_be_private("harbor.internal", 8443)
    assert not policy.may_be_private("harbor.internal", 443)  # configured with a port
    assert policy.may_be_private("auth.internal", 443)
    assert not policy.may_be_private("localhost", 5000)
    assert not RegistryPolicy().may_be_private("127.0.0.1", 5000)


@pytest.mark.parametrize(
    ("registry", "realm", "problem"),
    [
        ("docker.io", "https://auth.docker.io/token", None),
        ("ghcr.io", "https://ghcr.io/token", None),
        ("quay.io", "https://quay.io/v2/auth", None),
        ("us-docker.pkg.dev", "https://us-docker.pkg.dev/v2/token", None),
        ("public.ecr.aws", "https://public.ecr.aws/token/", None),
        ("registry.gitlab.com", "https://gitlab.com/jwt/auth", None),
        ("r.example.edu", "https://r.example.edu:5001/token", None),  # same host, any port
        ("ghcr.io", "https://auth.docker.io/token", "neither the registry's"),
        ("r.example.edu", "https://169.254.169.254/latest", "neither the registry's"),
        ("r.example.edu", "https://kubernetes.default.svc/api", "neither the registry's"),
        ("r.example.edu", "http://r.example.edu/token", "plain HTTP"),
        ("r.example.edu", "https://user:pw@r.example.edu/token", "user information"),
        ("r.example.edu", "/token", "absolute"),
        ("r.example.edu", "file:///etc/passwd", "absolute"),
    ],
)
def test_realm_rules(registry, realm, problem):
    found = RegistryPolicy().realm_problem(registry, registry, realm)
    assert (found is None) if problem is None else (problem in found)


def test_plain_http_realm_only_when_both_ends_are_listed_insecure():
    policy = RegistryPolicy(insecure_registries=("registry.local:5000",))
    assert policy.realm_problem("registry.local:5000", "registry.local:5000", "http://registry.local:5001/t")
    policy = RegistryPolicy(insecure_registries=("registry.local",))
    assert (
        policy.realm_problem("registry.local:5000", "registry.local:5000", "http://registry.local:5001/t")
        is None
    )
    # A TLS registry never sends its clients to a plain-HTTP token service.
    assert RegistryPolicy(insecure_registries=("auth.local",)).realm_problem(
        "r.local", "r.local", "http://auth.local/t"
    )


def test_configured_token_host():
    policy = RegistryPolicy(token_hosts=token_host_pairs(["harbor.example.edu=sso.example.edu"]))
    assert (
        policy.realm_problem("harbor.example.edu", "harbor.example.edu", "https://sso.example.edu/t") is None
    )
    assert policy.realm_problem("other.example.edu", "other.example.edu", "https://sso.example.edu/t")


def test_from_settings():
    settings = Settings(
        insecure_registries=("127.0.0.1",),
        private_registries=("harbor.internal",),
        registry_token_hosts=("harbor.internal=auth.internal",),
        resolve_deadline=12,
        registry_concurrency=2,
    )
    policy = RegistryPolicy.from_settings(settings)
    assert policy.insecure_registries == ("127.0.0.1",)
    assert policy.token_hosts == {"harbor.internal": ("auth.internal",)}
    assert (policy.deadline, policy.per_registry_concurrency) == (12, 2)
    assert RegistryPolicy.from_settings(Settings()) == RegistryPolicy()  # defaults agree


def test_bad_token_host_setting_names_the_variable(monkeypatch):
    from coursehub.settings import SettingsError, load

    monkeypatch.setenv("COURSEHUB_REGISTRY_TOKEN_HOSTS", "harbor.internal")
    with pytest.raises(SettingsError, match=r"COURSEHUB_REGISTRY_TOKEN_HOSTS.*registry=host"):
        load()
