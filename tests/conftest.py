"""Shared pytest wiring: each real part has its own fixture module under tests/fixtures/."""

pytest_plugins = [
    "fixtures.cluster",
    "fixtures.registry",
    "fixtures.ecr",
    "fixtures.postgres",
    "fixtures.jupyterhub",
]
