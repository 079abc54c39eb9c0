"""The Dockerfile, read as instructions (no Docker engine here to build it).

What can be checked without building: the stages and what the final one keeps, the pinned
and verified helm, the locked dependencies, the non-root user, the entrypoint and ports,
and that the pinned helm module sum is the one Go's checksum database knows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from coursehub.desired import puller
from coursehub_dev import images
from coursehub_dev.build import HELM_VERSION
from coursehub_dev.paths import Z2JH_DIR

REPO = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (ARGs before the first FROM are under "")."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for word, rest in instructions(text):
        if word == "FROM":
            m = re.match(r"(?i)(\S+)(?:\s+AS\s+(\S+))?$", rest)
            assert m, rest
            current = m.group(2) or f"stage{len(result)}"
            result[current] = [(word, rest)]
        else:
            result[current].append((word, rest))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def global_args(text: str) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in stages(text)[""] if w == "ARG" and "=" in a)


def stage_args(st: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in st if w == "ARG" and "=" in a)


def test_multi_stage_with_a_python_slim_runtime_last(dockerfile):
    st = stages(dockerfile)
    names = [n for n in st if n]
    assert names[-1] == "runtime" and len(names) >= 3
    base = st["runtime"][0][1].split()[0]
    assert base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", global_args(dockerfile)["PYTHON_IMAGE"])


def test_final_stage_has_no_build_tools(dockerfile):
    runtime = stages(dockerfile)["runtime"]
    # The one package install is the runtime tools course builds poll with (test below).
    runs = " ".join(a for w, a in runtime if w == "RUN").replace(
        "apt-get install -y -qq --no-install-recommends git openssh-client", ""
    )
    for tool in (
        "apt-get install",
        "apk add",
        "gcc",
        "build-essential",
        "make ",
        "pip install",
        "uv ",
        "go ",
    ):
        assert tool not in runs, f"the final stage runs {tool!r}"
    copies = [a for w, a in runtime if w == "COPY"]
    # Only the venv, the helm binary and the puller's no-op come across; no source tree, no uv, no Go.
    assert all(a.startswith("--from=") for a in copies), copies
    assert {a.split()[0] for a in copies} == {"--from=python-build", "--from=helm", "--from=noop"}


def test_runtime_has_git_and_ssh_for_polling_course_repositories(dockerfile):
    # The operator runs `git ls-remote` for every CourseImage with spec.build (https, or ssh
    # with a key Secret); without git in the image no in-cluster operator ever builds.
    runs = [a for w, a in stages(dockerfile)["runtime"] if w == "RUN"]
    install = next((a for a in runs if "apt-get install" in a), "")
    assert "--no-install-recommends git openssh-client" in install
    assert "rm -rf /var/lib/apt/lists/*" in install
    assert runs.index(install) < next(i for i, a in enumerate(runs) if "useradd" in a)


def test_noop_stage_builds_a_static_program_and_ships_it_where_pullers_look(dockerfile):
    noop = stages(dockerfile)["noop"]
    run = " ".join(a for w, a in noop if w == "RUN")
    assert "gcc -static" in run and "/src/noop.c" in run
    assert "INTERP" in run and "exit 1" in run  # a dynamically linked result stops the build
    assert ["images/noop/noop.c", "/src/noop.c"] in [a.split() for w, a in noop if w == "COPY"]
    copies = [a.split() for w, a in stages(dockerfile)["runtime"] if w == "COPY"]
    assert ["--from=noop", "/out/coursehub-noop", puller.NOOP_IN_OPERATOR_IMAGE] in copies


@pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("readelf") is None, reason="needs gcc and readelf"
)
def test_noop_compiles_statically_without_an_interpreter(tmp_path):
    """The noop stage's command, here: the program must run in images with no libc and no shell."""
    out = tmp_path / "coursehub-noop"
    subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(out), str(REPO / "images/noop/noop.c")], check=True
    )
    headers = subprocess.run(["readelf", "-l", str(out)], capture_output=True, text=True, check=True).stdout
    assert "INTERP" not in headers and "Requesting program interpreter" not in headers
    if shutil.which("file"):
        desc = subprocess.run(["file", str(out)], capture_output=True, text=True, check=True).stdout
        assert "statically linked" in desc and "dynamically linked" not in desc
    assert subprocess.run([str(out)]).returncode == 0
    assert out.stat().st_size < 2 * 1024 * 1024  # fits the puller's emptyDir (NOOP_SIZE_LIMIT)


def test_locked_dependencies_without_dev_group(dockerfile):
    runs = [a for w, a in stages(dockerfile)["python-build"] if w == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs and all("--frozen" in r and "--no-dev" in r for r in syncs)
    assert any("--no-editable" in r for r in syncs)


def test_helm_is_pinned_to_the_dev_cluster_version_and_verified(dockerfile):
    helm = stages(dockerfile)["helm"]
    args = stage_args(helm)
    assert args["HELM_VERSION"] == HELM_VERSION
    assert re.fullmatch(r"h1:[A-Za-z0-9+/]{43}=", args["HELM_MODULE_SUM"])
    run = " ".join(a for w, a in helm if w == "RUN")
    assert "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" in run
    assert "HELM_MODULE_SUM" in run and "exit 1" in run  # the sum is compared, a mismatch stops
    env = " ".join(a for w, a in helm if w == "ENV")
    assert "CGO_ENABLED=0" in env  # a static binary that runs on the slim image
    assert (
        "GONOSUMCHECK" not in dockerfile and "GONOSUMDB" not in dockerfile and "GOSUMDB=off" not in dockerfile
    )
    assert "GOFLAGS=-insecure" not in dockerfile


def test_pinned_helm_sum_is_what_the_go_checksum_database_knows(dockerfile):
    """Compared against the local module cache only (GOPROXY=off): no network in unit tests."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no go toolchain")
    args = stage_args(stages(dockerfile)["helm"])
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "-mod=mod"}
    res = subprocess.run(
        [go, "mod", "download", "-json", f"helm.sh/helm/v3@{args['HELM_VERSION']}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if res.returncode != 0:
        pytest.skip(f"helm {args['HELM_VERSION']} is not in the local Go module cache")
    assert json.loads(res.stdout)["Sum"] == args["HELM_MODULE_SUM"]


def test_non_root_entrypoint_and_ports(dockerfile):
    runtime = stages(dockerfile)["runtime"]
    users = [a for w, a in runtime if w == "USER"]
    assert users and users[-1].split(":")[0] == "65532"
    (entry,) = [a for w, a in runtime if w == "ENTRYPOINT"]
    assert json.loads(entry) == ["coursehub", "run"]
    exposed = {p for w, a in runtime if w == "EXPOSE" for p in a.split()}
    assert exposed == {"8080", "8000"}
    env = " ".join(a for w, a in runtime if w == "ENV")
    # helm needs writable homes; only /tmp is writable with readOnlyRootFilesystem.
    for var in ("HELM_CACHE_HOME=/tmp", "HELM_CONFIG_HOME=/tmp", "HELM_DATA_HOME=/tmp", "COURSEHUB_HELM="):
        assert var in env


def test_dockerignore_keeps_the_context_to_what_the_build_copies():
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!uv.lock", "!README.md", "!operator/", "!images/noop/noop.c"} <= set(lines)


def test_dev_tooling_stays_out_of_the_build_context_and_the_image(dockerfile):
    """dev/ (coursehub_dev) and tests/ never reach the image: not copied, not in the context."""
    copies = [a for st in stages(dockerfile).values() for w, a in st if w == "COPY"]
    for a in copies:
        sources = [s for s in a.split()[:-1] if not s.startswith("--")]
        assert not any(s.startswith(("dev", "./dev", "tests", "./tests")) for s in sources), a
    allowed = [
        ln.strip()[1:]
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip().startswith("!")
    ]
    assert not any(p.startswith(("dev", "tests")) for p in allowed), allowed


def test_every_base_image_is_a_build_argument(dockerfile):
    """The same Dockerfile builds on public bases (the defaults) and on this machine's images."""
    st = stages(dockerfile)
    named = {n for n in st if n}
    froms = [st[n][0][1].split()[0] for n in named]
    for image in froms:
        assert image in named or re.fullmatch(r"\$\{[A-Z_]+\}", image), f"FROM {image} is not an ARG"
    args = {f[2:-1] for f in froms if f.startswith("${")}
    assert args == set(images.OPERATOR_BASE_ARGS) <= set(global_args(dockerfile))


def test_bind_mount_targets_are_absolute(dockerfile):
    """buildah (the dev machine's builder) refuses relative mount targets."""
    runs = [a for st in stages(dockerfile).values() for w, a in st if w == "RUN"]
    targets = re.findall(r"--mount=\S*target=([^,\s]+)", " ".join(runs))
    assert targets and all(t.startswith("/") for t in targets), targets


def test_image_tag_covers_exactly_the_build_context():
    """The operator image's tag hashes what the build context holds, so a change to any file the
    image copies makes a new tag, and a change elsewhere (tests, dev tooling) does not."""
    files = {str(f.relative_to(REPO)) for f in images._operator_context_files()}
    assert {"Dockerfile", "pyproject.toml", "uv.lock", "README.md", "images/noop/noop.c"} <= files
    assert "operator/coursehub/cli.py" in files
    assert not any(f.startswith(("dev/", "tests/")) or "__pycache__" in f for f in files)


# -- the images under images/ and the example courses (built on the dev machine by images.py) ----

Z2JH_TGZ = Z2JH_DIR / "jupyterhub-4.4.0.tgz"
Z2JH_README = Z2JH_TGZ.parent / "README.md"
IMAGE_DOCKERFILES = sorted(REPO.glob("images/*/Dockerfile")) + sorted(
    REPO.glob("examples/courses-src/*/Dockerfile")
)


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return out


def _chart_file(member: str) -> str:
    import tarfile

    if not Z2JH_TGZ.exists():
        pytest.skip(f"{Z2JH_TGZ} is not on this machine")
    with tarfile.open(Z2JH_TGZ) as t:
        f = t.extractfile(f"jupyterhub/{member}")
        assert f is not None
        return f.read().decode()


@pytest.mark.parametrize("path", IMAGE_DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_image_dockerfiles_take_their_bases_as_build_arguments(path):
    """Each builds on public bases by default and on this machine's images when told."""
    text = path.read_text()
    st = stages(text)
    named = {n for n in st if n}
    for name in named:
        image = st[name][0][1].split()[0]
        assert image in named or re.fullmatch(r"\$\{[A-Z_]+\}", image), f"{path}: FROM {image}"
        if image.startswith("${"):
            default = global_args(text)[image[2:-1]]
            assert "/" in default or ":" in default, default  # a public image by default


def test_hub_image_installs_z2jh_pins_which_the_hub_venv_tests_share():
    hub = REPO / "images/hub"
    pins = _pins(hub / "requirements.txt")
    # The versions z2jh 4.4.0 ships (../shared/z2jh-4.4.0/README.md).
    expected = {
        "jupyterhub": "5.5.0",
        "jupyterhub-kubespawner": "7.0.0",
        "jupyterhub-idle-culler": "1.4.0",
        "jupyterhub-tmpauthenticator": "1.0.0",
        "kubernetes-asyncio": "36.1.0",
        "psycopg2": "2.9.12",
        "sqlalchemy": "2.0.50",
        "oauthenticator": "17.4.0",
    }
    assert {k: pins.get(k) for k in expected} == expected
    if Z2JH_README.exists():
        readme = Z2JH_README.read_text()
        for name, version in expected.items():
            assert f"{name.removeprefix('jupyterhub-')} {version}" in readme or f"{name} {version}" in readme
    # One home: the hub venv's requirements include this file and pin none of its packages again.
    venv_reqs = (REPO / "tests/hub-image-requirements.txt").read_text().splitlines()
    assert "-r ../images/hub/requirements.txt" in venv_reqs
    assert not set(_pins(REPO / "tests/hub-image-requirements.txt")) & set(pins)
    runs = " ".join(
        a for st in stages((hub / "Dockerfile").read_text()).values() for w, a in st if w == "RUN"
    )
    assert "--no-index" in runs and "-r /tmp/requirements.txt" in runs  # exactly the pinned wheels


def test_hub_image_runs_as_the_z2jh_chart_expects():
    st = stages((REPO / "images/hub/Dockerfile").read_text())
    final = st["slim-stage"]
    assert global_args((REPO / "images/hub/Dockerfile").read_text())["PYTHON_IMAGE"].startswith("python:3.12")
    (cmd,) = [json.loads(a) for w, a in final if w == "CMD"]
    assert [w for w, _ in final if w == "USER"] and [a for w, a in final if w == "WORKDIR"] == [
        "/srv/jupyterhub"
    ]
    assert "NB_UID=1000" in " ".join(a for w, a in final if w == "ARG")
    template = _chart_file("templates/hub/deployment.yaml")
    # The chart's default args: `jupyterhub --config <path>`; the image's CMD is the same.
    assert cmd == ["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"]
    assert (
        "- jupyterhub\n            - --config\n            - /usr/local/etc/jupyterhub/jupyterhub_config.py"
        in template
    )
    assert "- mountPath: /srv/jupyterhub" in template
    assert {p for w, a in final if w == "EXPOSE" for p in a.split()} == {"8081"}


def test_proxy_image_is_the_chart_version_and_on_path():
    d = REPO / "images/configurable-http-proxy"
    values = _chart_file("values.yaml")
    assert yaml.safe_load(values)["proxy"]["chp"]["image"]["tag"] == "5.2.0"
    assert json.loads((d / "package.json").read_text())["dependencies"] == {
        "configurable-http-proxy": "5.2.0"
    }
    lock = json.loads((d / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/configurable-http-proxy"]["version"] == "5.2.0"
    assert all("integrity" in p for k, p in lock["packages"].items() if k)  # every dependency pinned by hash
    text = (d / "Dockerfile").read_text()
    final = list(stages(text).values())[-1]
    env = " ".join(a for w, a in final if w == "ENV")
    assert "node_modules/.bin" in env  # the chart's command is a bare `configurable-http-proxy`
    assert "- configurable-http-proxy\n" in _chart_file("templates/proxy/deployment.yaml")
    assert [a for w, a in final if w == "USER"] == ["65534"]
    assert "npm ci" in " ".join(a for w, a in stages(text)["build"] if w == "RUN")


def test_network_tools_image_has_what_the_hubs_init_container_runs():
    config = _chart_file("files/hub/jupyterhub_config.py")
    assert 'name="block-cloud-metadata"' in config and '"iptables",' in config
    text = (REPO / "images/network-tools/Dockerfile").read_text()
    runs = " ".join(a for st in stages(text).values() for w, a in st if w == "RUN")
    assert "install" in runs and "iptables" in runs and "iptables-legacy" in runs


def test_example_courses_are_course_repositories():
    """Each example course: a Dockerfile taking BASE_IMAGE, pinned requirements with JupyterLab, a
    notebook; one of them is a GPU course (examples/courses/*.yaml: gpu: required)."""
    names = images.ImageBuilder().course_names()
    assert {"clustering", "uai-1"} <= set(names)
    for name in names:
        d = images.COURSES_DIR / name
        assert "BASE_IMAGE" in global_args((d / "Dockerfile").read_text())
        reqs = [
            ln for ln in (d / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")
        ]
        assert all("==" in ln for ln in reqs) and any(ln.startswith("jupyterlab==") for ln in reqs)
        assert list((d / "notebooks").glob("*.ipynb"))
    assert "gpu: required" in (REPO / "examples/courses/uai-1.yaml").read_text()
