"""Shared pytest wiring: each real part has its own fixture module under tests/fixtures/."""

import pytest

pytest_plugins = [
    "fixtures.cluster",
    "fixtures.registry",
    "fixtures.ecr",
    "fixtures.postgres",
    "fixtures.jupyterhub",
    "fixtures.operator",
    "fixtures.keycloak",
    "fixtures.browser",
    "fixtures.git_server",
]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test at teardown."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
