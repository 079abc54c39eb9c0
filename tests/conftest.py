"""Shared pytest wiring: each real part has its own fixture module under tests/fixtures/."""

import pytest

pytest_plugins = [
    "fixtures.cluster",
    "fixtures.registry",
    "fixtures.ecr",
    "fixtures.postgres",
    "fixtures.jupyterhub",
    "fixtures.operator",
    "fixtures.real_cluster",
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


def pytest_collection_modifyitems(config, items):
    """Tests that start real nodes of their own run before any test of the session's
    `real_cluster`: only one real-node cluster fits the machine (realnodes.LOCK_PATH)."""
    own = [i for i in items if i.get_closest_marker("real_nodes") and "real_cluster" not in i.fixturenames]
    if own:
        items[:] = own + [i for i in items if i not in own]
