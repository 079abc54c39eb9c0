"""Shared pytest wiring: each real part has its own fixture module under tests/fixtures/."""

import os

import pytest

from coursehub_dev.existing import KUBECONFIG_ENV

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


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "own_control_plane(reason): needs the local control plane's internals (stopping the API "
        "server or kwok, its PKI, the machine); skipped on an existing cluster (COURSEHUB_E2E_KUBECONFIG)",
    )


def pytest_collection_modifyitems(config, items):
    """Tests that start real nodes of their own run before any test of the session's
    `real_cluster`: only one real-node cluster fits the machine (realnodes.LOCK_PATH).

    On an existing cluster (COURSEHUB_E2E_KUBECONFIG, docs/kind.md) exactly two kinds of test
    skip, each saying why: those marked own_control_plane, and those that start a real-node
    cluster of their own on this machine."""
    own = [i for i in items if i.get_closest_marker("real_nodes") and "real_cluster" not in i.fixturenames]
    if os.environ.get(KUBECONFIG_ENV):
        # One cluster serves both fixtures there: the operator that `real_cluster` installs
        # watches every namespace, so it comes only after the tests that run operators of
        # their own (a session fixture is set up at its first user).
        items[:] = [i for i in items if "real_cluster" not in i.fixturenames] + [
            i for i in items if "real_cluster" in i.fixturenames
        ]
        for i in items:
            mark = i.get_closest_marker("own_control_plane")
            if mark:
                why = mark.args[0] if mark.args else mark.kwargs.get("reason", "")
                i.add_marker(pytest.mark.skip(reason=f"existing cluster ({KUBECONFIG_ENV}): {why}"))
            elif i in own:
                i.add_marker(
                    pytest.mark.skip(
                        reason=f"existing cluster ({KUBECONFIG_ENV}): starts real nodes of its own "
                        "on this machine (a DevCluster), which is not the cluster under test"
                    )
                )
    if own:
        items[:] = own + [i for i in items if i not in own]
