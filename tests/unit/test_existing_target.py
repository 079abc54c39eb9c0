"""Targeting an existing cluster (docs/kind.md): what the user gives is checked with errors that
name the variable and the fix; tests that need our control plane skip, saying why."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from coursehub_dev import demo, existing
from coursehub_dev.paths import REPO_ROOT


def test_a_missing_kubeconfig_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(existing.KUBECONFIG_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"COURSEHUB_E2E_KUBECONFIG=.*no such file"):
        existing.target_kubeconfig()
    monkeypatch.delenv(existing.KUBECONFIG_ENV)
    assert existing.target_kubeconfig() is None  # our own control plane


def test_an_images_file_without_the_operator_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv(existing.IMAGES_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"COURSEHUB_E2E_IMAGES is not set.*docs/kind\.md"):
        existing.target_images()
    f = tmp_path / "images.json"
    f.write_text(json.dumps({"registry": "kind-registry:5000"}))
    monkeypatch.setenv(existing.IMAGES_ENV, str(f))
    with pytest.raises(ValueError, match="missing operator"):
        existing.target_images()


def test_course_images_come_from_the_file_never_built():
    known = existing.KnownImages(
        {"registry": "r:5000", "operator": "r:5000/op:1", "course-clustering": "r:5000/c:1"}
    )
    assert known.course("clustering") == "r:5000/c:1"
    assert known.course_names() == ["clustering"]
    with pytest.raises(KeyError, match="no 'course-uai-1' image"):
        known.course("uai-1")


def test_demo_courses_take_the_examples_specs_and_a_gpu_course_needs_a_gpu_node():
    without = {c["source"]: c for c in demo.example_courses(["clustering", "uai-1"], gpu_node=False)}
    with_gpu = {c["source"]: c for c in demo.example_courses(["clustering", "uai-1"], gpu_node=True)}
    assert with_gpu["uai-1"]["gpu"] == "required"  # examples/courses/uai-1.yaml
    assert without["uai-1"]["gpu"] == "optional"  # one CPU node: it still opens
    assert without["uai-1"]["slug"] == "uai_source-uai.1"
    assert without["clustering"]["gpu"] == "none"


def test_hub_version_is_the_hub_images_pin():
    pins = (REPO_ROOT / "images" / "hub" / "requirements.txt").read_text()
    assert f"jupyterhub=={demo.hub_version()}\n" in pins


def test_own_control_plane_tests_skip_with_their_reason_on_an_existing_cluster(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    tests = [
        "tests/e2e/test_faults.py::test_apiserver_outage_operator_reconnects",
        "tests/e2e/test_kube_credentials_reload.py",
        "tests/e2e/test_real_node.py",
    ]
    env = {**os.environ, existing.KUBECONFIG_ENV: str(kubeconfig)}
    # The skips are decided before any fixture runs: nothing here talks to a cluster.
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *tests],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "stops and restarts the local kube-apiserver" in out
    assert "from the dev cluster's PKI" in out
    assert "starts real nodes of its own on this machine" in out
    assert " passed" not in out and " failed" not in out and " error" not in out
