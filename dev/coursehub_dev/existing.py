"""An existing cluster named by a kubeconfig (kind, k3d, a staging cluster) in place of the local
control plane: the e2e suite (COURSEHUB_E2E_KUBECONFIG) and `coursehub-dev demo --kubeconfig`.

What a user has for such a cluster is all this uses: the kubeconfig, and for the real-node parts
an images file (COURSEHUB_E2E_IMAGES, JSON) naming the images built and pushed for it:

    {"registry": "kind-registry:5000",                 # where course images live; the operator
                                                       # resolves their digests there (listed as
                                                       # an insecure registry: plain HTTP)
     "operator": "kind-registry:5000/coursehub/operator:dev",
     "course-clustering": "kind-registry:5000/coursehub/course-clustering:dev",
     "course-uai-1": "kind-registry:5000/coursehub/course-uai-1:dev"}

`coursehub-dev up --real-nodes N` writes a file of this shape (`<state>/realnodes/images.json`).
z2jh's images (quay.io/jupyterhub/*) are the cluster's to pull, as for any z2jh install.

The nodes whose pods really run carry the label `coursehub.dev/real-node=true` (stack.py's
REAL_NODE_SELECTOR); the hub URL a browser on this machine opens is such a node's InternalIP
and the proxy-public NodePort. The kwok-level tests want the dev cluster's three fake nodes
(kwok-node-0, kwok-node-1, kwok-gpu-0): when they are not there, `up` registers them and runs
kwok on this machine against the cluster (kwok is a client of the API server), and `down`
removes them again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import yaml

from . import build
from .cluster import KWOK_NODE_ANNOTATION, DevCluster, node_manifest, run_kubectl
from .paths import Z2JH_CHART
from .stack import OPERATOR_NAMESPACE, OPERATOR_RELEASE, Stack
from .waiting import wait_until

if TYPE_CHECKING:
    from .images import ImageBuilder

S = TypeVar("S", bound=Stack)

KUBECONFIG_ENV = "COURSEHUB_E2E_KUBECONFIG"
IMAGES_ENV = "COURSEHUB_E2E_IMAGES"
REAL_NODE_LABEL = ("coursehub.dev/real-node", "true")


def target_kubeconfig() -> Path | None:
    """The existing cluster the suite targets ($COURSEHUB_E2E_KUBECONFIG), or None (our own)."""
    value = os.environ.get(KUBECONFIG_ENV)
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{KUBECONFIG_ENV}={value}: no such file (a kubeconfig of the cluster)")
    return path


def target_images() -> dict[str, str]:
    """The images file ($COURSEHUB_E2E_IMAGES) of an existing cluster, checked for what is needed."""
    value = os.environ.get(IMAGES_ENV)
    if not value:
        raise RuntimeError(
            f"{IMAGES_ENV} is not set: the real-node tests on an existing cluster need a JSON file "
            "naming 'registry', 'operator' and 'course-<name>' images pushed for it (docs/kind.md)"
        )
    images = json.loads(Path(value).expanduser().read_text())
    missing = [k for k in ("registry", "operator") if not images.get(k)]
    if missing:
        raise ValueError(f"{IMAGES_ENV}={value}: missing {', '.join(missing)} (docs/kind.md)")
    return images


class KnownImages:
    """Stands where stack.Stack wants its ImageBuilder: course images come from the images file
    (built and pushed by the user), never built here."""

    def __init__(self, images: dict[str, str]) -> None:
        self.refs = images

    def course(self, name: str) -> str:
        ref = self.refs.get(f"course-{name}")
        if not ref:
            raise KeyError(f"{IMAGES_ENV}: no 'course-{name}' image (build examples/courses-src/{name})")
        return ref

    def course_names(self) -> list[str]:
        return sorted(k.removeprefix("course-") for k in self.refs if k.startswith("course-"))


@dataclass
class ExistingCluster:
    """The DevCluster interface the tests and stack.Stack use (kubeconfig, kubectl, get, env,
    binaries, state_dir, server), over a cluster this process did not start."""

    kubeconfig: Path
    state_dir: Path
    log: Callable[[str], object] = print
    binaries: dict = field(default_factory=dict)
    _procs: dict = field(default_factory=dict)
    _registered: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.binaries:
            self.binaries = {k: str(v) for k, v in build.build_all(log=self.log).items()}

    @property
    def server(self) -> str:
        cfg = yaml.safe_load(self.kubeconfig.read_text())
        current = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == current)
        return next(c["cluster"]["server"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])

    @property
    def real_nodes(self) -> int:
        return len(self.node_ips())

    def env(self) -> dict[str, str]:
        bin_dirs = sorted({str(Path(p).parent) for p in self.binaries.values()})
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")]),
            "COURSEHUB_HELM": self.binaries["helm"],
        }
        env.setdefault("COURSEHUB_CHART_PATHS", str(Z2JH_CHART))
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        return run_kubectl(self.binaries["kubectl"], args, env=self.env(), input=input, check=check)

    def get(self, path: str) -> dict:
        # Through kubectl: any credential a kubeconfig may hold (certificates, tokens, exec plugins).
        return json.loads(self.kubectl("get", "--raw", path).stdout)

    def node_ips(self) -> dict[str, str]:
        """Node name -> InternalIP of the nodes whose pods really run (REAL_NODE_LABEL)."""
        key, value = REAL_NODE_LABEL
        nodes = self.get(f"/api/v1/nodes?labelSelector={key}%3D{value}")["items"]
        return {
            n["metadata"]["name"]: a["address"]
            for n in nodes
            for a in n["status"].get("addresses", [])
            if a["type"] == "InternalIP"
        }

    # -- lifecycle -------------------------------------------------------------
    def up(self, crds: list[Path] | None = None) -> ExistingCluster:
        """The CRDs and the tenant ClusterRole (as DevCluster.up), and kwok's fake nodes."""
        if crds:
            self.kubectl(
                "apply", "--server-side", "--force-conflicts", *(a for p in crds for a in ("-f", str(p)))
            )
            for p in crds:
                name = yaml.safe_load(p.read_text())["metadata"]["name"]
                self.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        from coursehub.desired.tenancy import tenant_cluster_role

        self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(tenant_cluster_role())
        )
        self._fake_nodes()
        return self

    def _fake_nodes(self) -> None:
        wanted = DevCluster.nodes
        existing = {
            n["metadata"]["name"]
            for n in self.get("/api/v1/nodes")["items"]
            if n["metadata"].get("annotations", {}).get(KWOK_NODE_ANNOTATION) == "fake"
        }
        missing = [(name, gpu) for name, gpu in wanted if name not in existing]
        if missing:
            docs = [node_manifest(name, gpu=gpu) for name, gpu in missing]
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
            self._registered = [name for name, _ in missing]
        if not missing and self._kwok_ready([name for name, _ in wanted]):
            return  # someone runs kwok for them (the dev cluster `coursehub-dev up` started)
        dev = DevCluster(state_dir=self.state_dir, binaries=self.binaries)
        dev.kubeconfig.write_text(self.kubeconfig.read_text())  # DevCluster's kwok reads its own path
        (self.state_dir / "logs").mkdir(exist_ok=True)
        dev.start_kwok()
        self._procs.update(dev._procs)
        wait_until(lambda: self._kwok_ready([n for n, _ in wanted]), timeout=60, what="kwok nodes Ready")

    def _kwok_ready(self, names: list[str]) -> bool:
        ready = 0
        for n in self.get("/api/v1/nodes")["items"]:
            if n["metadata"]["name"] in names and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            ):
                ready += 1
        return ready == len(names)

    def down(self) -> None:
        """Stop the kwok this object started and remove the nodes it registered; the cluster
        itself is the user's and stays."""
        for proc in self._procs.values():
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self._procs.clear()
        if self._registered:
            self.kubectl("delete", "node", *self._registered, "--wait=false", check=False)
            self._registered = []
        shutil.rmtree(self.state_dir, ignore_errors=True)


def install_stack(stack_cls: type[S], cluster: ExistingCluster, images: dict[str, str], log=print) -> S:
    """stack.Stack on an existing cluster: the operator installed by its chart with the user's
    operator image (Stack.install_operator, as on our own cluster); course images from `images`."""
    node_ips = cluster.node_ips()
    if not node_ips:
        key, value = REAL_NODE_LABEL
        raise RuntimeError(
            f"no node of {cluster.kubeconfig} is labelled {key}={value}: label the nodes whose "
            "pods really run (kind: the workers' `labels` in the cluster config, docs/kind.md)"
        )
    stack = stack_cls(
        cast("DevCluster", cluster),
        images["registry"],
        node_ips,
        {"operator": images["operator"]},
        cast("ImageBuilder", KnownImages(images)),
        log,
    )
    stack.install_operator()
    return stack


def uninstall_stack(stack: Stack, namespaces: list[str]) -> None:
    """Leave the user's cluster as found: the namespaces made for it deleted while the operator
    still runs (its finalizers on hubs and courses need it), then the operator's release."""
    for ns in namespaces:
        # Hubs and courses first: deleting the namespace at once removes the RoleBinding that
        # lets the operator's helm uninstall the hub's release, and the hub's finalizer then
        # stays for ever (seen here; the namespace stays Terminating).
        stack.cluster.kubectl(
            "delete", "jupyterhubdeployments,courseimages", "--all", "-n", ns, "--wait", "--timeout=300s",
            check=False,
        )  # fmt: skip
    if namespaces:
        stack.cluster.kubectl("delete", "namespace", *namespaces, "--wait", "--timeout=300s", check=False)
    stack.helm("uninstall", OPERATOR_RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait")
