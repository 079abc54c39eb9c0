"""The images of issue 11, built on this machine (images.ImageBuilder), and what is inside them.

Each image is built (warm: found by its content tag in the local registry, nothing built) and
then looked into with `buildah run` in a network namespace of its own: the hub's packages are
exactly z2jh 4.4.0's pins on Python 3.12, the proxy reports 5.2.0, network-tools' iptables
adds z2jh's block-cloud-metadata rule, the operator's command runs from its wheel, the course
images hold JupyterLab and their notebooks. Needs root, buildah and mmdebstrap
(scripts/install-system-deps.sh); run it under the shared e2e lock like every e2e test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from coursehub.desired import puller
from coursehub_dev import images
from coursehub_dev.build import HELM_VERSION
from coursehub_dev.paths import REPO_ROOT

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah and mmdebstrap here run as root"),
    pytest.mark.skipif(
        not (shutil.which("buildah") and shutil.which("mmdebstrap")), reason="scripts/install-system-deps.sh"
    ),
]


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    b = images.ImageBuilder()
    b.start_registry(tmp_path_factory.mktemp("registry"))
    yield b
    assert b.registry is not None
    b.registry.stop()
    print(f"\n[image timings] {' '.join(f'{k}={v:.1f}s' for k, v in sorted(b.timings.items()))}")


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return out


def _config(builder: images.ImageBuilder, ref: str) -> dict:
    """The image's OCI config as buildah reads it."""
    repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
    name = builder._local_name(repo, tag)
    if not builder._in_storage(repo, tag):
        builder.run_in(ref, "true")  # pulls it into storage under its local name
    return json.loads(builder._buildah("inspect", "--type", "image", name).stdout)["OCIv1"]["config"]


def test_hub_image_is_z2jhs_pins_on_python_312(builder):
    ref = builder.hub()
    out = builder.run_in(
        ref, "sh", "-c", "python3 --version; id -u; pwd; pip freeze --all; echo ---; jupyterhub --version"
    )
    head, _, tail = out.partition("---")
    lines = head.split()
    assert re.fullmatch(r"3\.12\.\d+", lines[1]), lines[:2]
    assert lines[2] == "1000" and lines[3] == "/srv/jupyterhub"
    frozen = _pins_from_lines(lines[4:])
    frozen.pop("pip", None)  # the interpreter's own installer, not a hub package
    assert frozen == _pins(REPO_ROOT / "images/hub/requirements.txt")
    assert tail.strip() == "5.5.0"
    # psycopg2 and pycurl were compiled against libpq and libcurl: their libraries load.
    libs = builder.run_in(ref, "python3", "-c", "import psycopg2, pycurl; print(psycopg2.__libpq_version__)")
    assert int(libs) >= 150000
    config = _config(builder, ref)
    assert config["Entrypoint"] == ["tini", "--"]
    assert config["Cmd"] == ["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"]
    assert "8081/tcp" in config["ExposedPorts"]


def _pins_from_lines(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        name, sep, version = line.partition("==")
        assert sep, f"not a pinned distribution in pip freeze: {line}"
        out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_proxy_image_is_chp_520_as_nobody(builder):
    ref = builder.proxy()
    out = builder.run_in(ref, "sh", "-c", "configurable-http-proxy --version; id -u; node --version")
    version, uid, node = out.split()
    assert version == "5.2.0" and uid == "65534"
    assert int(node.lstrip("v").split(".")[0]) >= 20  # chp 5.2.0's engines


def test_network_tools_adds_z2jhs_block_cloud_metadata_rule(builder):
    """z2jh's init container command, in a network namespace of the image's own (checked first:
    the rule must never reach this machine's tables)."""
    ref = builder.network_tools()
    host_netns = os.readlink("/proc/self/ns/net")
    command = (
        "iptables --append OUTPUT --protocol tcp --destination 169.254.169.254"
        " --destination-port 80 --jump DROP"
    )
    out = builder.run_in(
        ref,
        "sh",
        "-euc",
        f'[ "$(readlink /proc/self/ns/net)" != "{host_netns}" ] || exit 99; {command}; iptables -S OUTPUT;'
        " iptables --version",
        caps=("CAP_NET_ADMIN", "CAP_NET_RAW"),
    )
    assert "-A OUTPUT -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DROP" in out
    assert "(legacy)" in out


def test_operator_image_runs_coursehub_from_its_wheel(builder):
    ref = builder.operator()
    out = builder.run_in(ref, "coursehub", "--help")
    assert "run the operator" in out
    where = builder.run_in(
        ref,
        "python",
        "-c",
        "import coursehub, importlib.metadata as m; d = m.distribution('coursehub-operator');"
        " print(coursehub.__file__); print(d.read_text('direct_url.json') or '')",
    )
    path, _, direct_url = where.partition("\n")
    # Installed into the venv's site-packages from the built wheel, not linked to a source tree.
    assert path.startswith("/app/.venv/lib/python3.11/site-packages/coursehub/"), path
    assert json.loads(direct_url)["dir_info"].get("editable") is False
    assert builder.run_in(ref, "helm", "version", "--short").startswith(HELM_VERSION)
    assert builder.run_in(ref, "sh", "-c", f"{puller.NOOP_IN_OPERATOR_IMAGE} && id -u").strip() == "65532"
    assert _config(builder, ref)["Entrypoint"] == ["coursehub", "run"]


@pytest.mark.parametrize("course", ["clustering", "uai-1"])
def test_course_images_hold_jupyterlab_and_the_notebook(builder, course):
    ref = builder.course(course)
    out = builder.run_in(ref, "sh", "-c", "jupyter lab --version; ls /home/jovyan; id -u")
    version, *files, uid = out.split()
    assert version == "4.4.10" and "intro.ipynb" in files and uid == "1000"
    if course == "uai-1":
        # The GPU course's notebook asks NVML; with no driver in the container it says so.
        nb = json.loads((images.COURSES_DIR / course / "notebooks/intro.ipynb").read_text())
        code = "".join(nb["cells"][1]["source"])
        assert "no NVIDIA driver in this container" in builder.run_in(ref, "python3", "-c", code)


def test_a_second_run_builds_nothing(builder):
    """Warm: a new builder (as `up` makes) finds every tag in the registry and builds nothing.
    Tags are content hashes, so an image whose inputs changed in between (another edit of
    operator/ in this working tree) is the only kind that may be built again."""
    first = builder.real_node_images()
    said: list[str] = []
    again = images.ImageBuilder.attach(builder.registry_host or "", log=said.append)
    second = again.real_node_images()
    assert set(second) >= {"operator", "hub", "proxy", "network_tools", "course-clustering", "course-uai-1"}
    built = {s.split()[2] for s in said if s.startswith("[images] building") and "(build only)" not in s}
    changed = {ref.split("/", 1)[1] for key, ref in second.items() if first[key] != ref}
    assert built <= changed, said
