"""The whole stack on real nodes: the operator installed by its chart from its image built here,
hubs from the published z2jh chart with hub and proxy as real pods, course images pre-pulled.

Used by the e2e session fixture `real_cluster` (tests/fixtures/real_cluster.py), the benchmark
(bench/bench_real_nodes.py) and `make demo`. Needs a DevCluster with real nodes (realnodes.py):

    stack = Stack.install(cluster)            # images, operator chart, z2jh image names
    stack.create_course(ns, "clustering")     # a CourseImage of examples/courses-src/clustering
    stack.create_hub(ns)                      # a JupyterHubDeployment with the z2jh 4.4.0 .tgz
    stack.wait_hub_ready(ns); stack.hub_url(ns)

Images: the z2jh chart names quay.io/jupyterhub/* and registry.k8s.io/pause; realnodes.py makes
containerd take those registries from the local one, and this module copies the images built
here (images.ImageBuilder) under those names. Course images keep the local registry's own
name (HOST_IP:port/...), which containerd on the host and the operator in a pod both reach;
the operator's chart lists it as an insecure (plain HTTP, private address) registry, the
operator's setting for in-cluster registries: its default still refuses private addresses.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import requests

from coursehub.hub import DEFAULT_STAFF_GROUP

from . import nodeimages
from .images import ImageBuilder
from .paths import REPO_ROOT, Z2JH_CHART
from .realnodes import GPU_TAINT, SANDBOX_IMAGE, SOCKET_DIR, RealNodes, mirrored, plan
from .registry import copy_image
from .waiting import wait_until

if TYPE_CHECKING:
    from .cluster import DevCluster

OPERATOR_CHART = REPO_ROOT / "charts" / "coursehub-operator"
OPERATOR_RELEASE, OPERATOR_NAMESPACE = "coursehub", "coursehub-system"
# Inside the operator's container: the z2jh chart's directory, mounted read-only (hostPath).
CHART_MOUNT = "/charts"
REAL_NODE_SELECTOR = {"coursehub.dev/real-node": "true"}
# The images the z2jh 4.4.0 chart names (its values.yaml), and the ImageBuilder method that
# builds each at z2jh's pins (../shared/z2jh-4.4.0/README.md).
Z2JH_IMAGES = {
    "hub": "quay.io/jupyterhub/k8s-hub:4.4.0",
    "proxy": "quay.io/jupyterhub/configurable-http-proxy:5.2.0",
    "network_tools": "quay.io/jupyterhub/k8s-network-tools:4.4.0",
}
GROUP = "coursehub.dev"
HUB_API_SERVICE = "coursehub-dev"
# The service whose token makes hub users course staff (docs/hub-side.md, "Making someone staff").
STAFF_SERVICE = "coursehub-staff-admin"


def staff_values(group: str = DEFAULT_STAFF_GROUP) -> dict[str, Any]:
    """z2jh `hub` values that let a platform engineer make a hub user course staff: the staff group
    exists from the hub's start (`load_groups` only adds), and the hub service STAFF_SERVICE, whose
    token (z2jh generates it into its `hub` Secret) may add and remove members of that one group
    and do nothing else (no admin, no other group, no servers)."""
    return {
        "config": {"JupyterHub": {"load_groups": {group: {"users": []}}}},
        "services": {STAFF_SERVICE: {}},
        "loadRoles": {STAFF_SERVICE: {"services": [STAFF_SERVICE], "scopes": [f"groups!group={group}"]}},
    }


@dataclass
class Stack:
    """A real-node DevCluster with the operator running in it.

    Fields: `cluster` (DevCluster: `.kubeconfig`, `.kubectl()`, `.get()`), `registry` (the local
    registry's host:port, the same name for pods and containerd), `node_ips` (real node name ->
    node IP), `images` (what was built: operator, pause, base, hub, proxy, network_tools; and
    the z2jh names they run under), `builder` (builds more, e.g. courses).
    """

    cluster: DevCluster
    registry: str
    node_ips: dict[str, str]
    images: dict[str, str]
    builder: ImageBuilder
    log: Callable[[str], object] = print
    timings: dict[str, float] = field(default_factory=dict)

    # -- setup -----------------------------------------------------------------
    @classmethod
    def install(cls, cluster: DevCluster, log: Callable[[str], object] = print) -> Stack:
        """Build (or find) the images, copy z2jh's under the chart's names and `helm install`
        the operator chart with the operator image, as a user installs it."""
        refs = RealNodes.images_of(cluster.state_dir)
        builder = RealNodes.image_builder(cluster.state_dir, log=log)
        node_ips = {n.name: n.ip for n in plan(cluster.real_nodes)}
        stack = cls(cluster, refs["registry"], node_ips, {}, builder, log)
        t = time.monotonic()
        stack.images = {"pause": refs["pause"], "base": refs["base"], "sandbox": SANDBOX_IMAGE}
        stack.images.update(stack.z2jh_images())
        stack.images["operator"] = builder.operator()
        stack.timings["images"] = time.monotonic() - t
        t = time.monotonic()
        stack.install_operator()
        stack.timings["operator"] = time.monotonic() - t
        log(
            f"[stack] operator running ({stack.timings['operator']:.1f}s; images "
            f"{stack.timings['images']:.1f}s): {stack.images['operator']}"
        )
        return stack

    def z2jh_images(self) -> dict[str, str]:
        """Build z2jh's images here and put each under the name the chart uses."""
        out = {}
        for key, name in Z2JH_IMAGES.items():
            build = getattr(self.builder, key, None)
            if build is None:
                raise RuntimeError(
                    f"images.ImageBuilder.{key}() is missing: it builds {name} at z2jh 4.4.0's pins"
                )
            ref = build()
            copy_image(ref, mirrored(self.registry, name))
            out[key] = ref
            out[f"{key}_as"] = name
        return out

    def operator_values(self) -> dict[str, Any]:
        repo, _, tag = self.images["operator"].rpartition(":")
        return {
            "image": {"repository": repo, "tag": tag},
            "watch": {"allNamespaces": True},
            "charts": {"paths": [CHART_MOUNT]},
            "operator": {
                # Plain HTTP on the host bridge address: the operator's own setting for an
                # in-cluster registry (every other host must still be public and TLS).
                "insecureRegistries": [self.registry],
                "resolveIntervalSeconds": 5,
                "jsonLogs": False,
            },
            "ecr": {"lifecycle": False},
            "nodeSelector": REAL_NODE_SELECTOR,
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}},
            "extraEnv": [
                {"name": "COURSEHUB_DEBOUNCE_SECONDS", "value": "0.3"},
                {"name": "COURSEHUB_ROLLOUT_POLL_SECONDS", "value": "1"},
            ],
            # The published z2jh chart for spec.chart.path (an air-gapped install's way).
            "extraVolumes": [
                {"name": "z2jh", "hostPath": {"path": str(Z2JH_CHART.parent), "type": "Directory"}}
            ],
            "extraVolumeMounts": [{"name": "z2jh", "mountPath": CHART_MOUNT, "readOnly": True}],
        }

    def install_operator(self) -> None:
        values = self.cluster.state_dir / "operator-values.json"
        values.write_text(json.dumps(self.operator_values(), indent=1))
        self.helm(
            "upgrade", "--install", OPERATOR_RELEASE, str(OPERATOR_CHART),
            "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
            "-f", str(values), "--wait", "--timeout", "5m",
        )  # fmt: skip

    def helm(self, *args: str) -> str:
        res = subprocess.run(
            [self.cluster.binaries["helm"], *args], capture_output=True, text=True, env=self.cluster.env()
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"helm {' '.join(args[:3])} failed: {res.stderr.strip()}\n{self.operator_log()}"
            )
        return res.stdout

    def operator_log(self, lines: int = 80) -> str:
        res = self.cluster.kubectl(
            "logs", "-n", OPERATOR_NAMESPACE, f"deploy/{OPERATOR_RELEASE}-coursehub-operator",
            f"--tail={lines}", check=False,
        )  # fmt: skip
        return res.stdout + res.stderr

    # -- courses and hubs --------------------------------------------------------
    @property
    def z2jh_chart_path(self) -> str:
        """spec.chart.path of the published z2jh chart inside the operator's container."""
        return f"{CHART_MOUNT}/{Z2JH_CHART.name}"

    def apply(self, obj: dict) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def namespace(self, name: str) -> str:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    def create_course(
        self,
        namespace: str,
        source: str,
        *,
        slug: str | None = None,
        name: str | None = None,
        image: str | None = None,
        pre_pull: bool = True,
        gpu: str = "none",
        default_notebook: str | None = "intro.ipynb",
    ) -> dict:
        """A CourseImage of `examples/courses-src/<source>` (built here) or of `image`."""
        ref = image or self.builder.course(source)
        spec: dict[str, Any] = {
            "course": slug or source,
            "image": ref,
            "displayName": source,
            "gpu": gpu,
            "prePull": pre_pull,
        }
        if default_notebook:
            spec["defaultNotebook"] = default_notebook
        obj = {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "CourseImage",
            "metadata": {"name": name or _object_name(slug or source), "namespace": namespace},
            "spec": spec,
        }
        self.apply(obj)
        return obj

    def hub_manifest(
        self,
        namespace: str,
        name: str = "hub",
        *,
        default_course: str | None = None,
        culling: dict | None = None,
        pre_pull: dict | None = None,
        values: dict | None = None,
    ) -> dict:
        """A JupyterHubDeployment installing the real z2jh 4.4.0 chart: hub and proxy pods from the
        images built here, on real nodes, the proxy on a NodePort, sqlite in memory."""
        courses: dict[str, Any] = {"namespaces": "Same", "onUnknown": "reject"}
        if default_course:
            courses = {"namespaces": "Same", "default": default_course, "onUnknown": "default"}
        staff = staff_values()
        z2jh: dict[str, Any] = {
            "hub": {
                "nodeSelector": REAL_NODE_SELECTOR,
                # A token for tests, benchmarks and the demo to see and stop learners (z2jh
                # generates it into its `hub` Secret): these hubs are this machine's only.
                # And the staff group with the token that grants it (make_staff).
                "config": staff["config"],
                "services": {HUB_API_SERVICE: {}, **staff["services"]},
                "loadRoles": {
                    HUB_API_SERVICE: {
                        "services": [HUB_API_SERVICE],
                        "scopes": ["admin:users", "admin:servers", "list:users"],
                    },
                    **staff["loadRoles"],
                },
            },
            "proxy": {"chp": {"nodeSelector": REAL_NODE_SELECTOR}, "service": {"type": "NodePort"}},
            "singleuser": {"nodeSelector": REAL_NODE_SELECTOR},
            # z2jh's placeholder pods only hold room for the user scheduler (off here).
            "scheduling": {"userPlaceholder": {"enabled": False}},
        }
        for key, extra in (values or {}).items():
            z2jh[key] = {**z2jh.get(key, {}), **extra}
        return {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "JupyterHubDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "chart": {"path": self.z2jh_chart_path},
                "domain": "hub.coursehub.test",
                # No SSO gate on this machine: on purpose (tests and demos).
                "auth": {"mode": "tmp", "allowUngated": True},
                "database": {"type": "sqlite-memory"},
                "culling": culling or {"enabled": False},
                "courses": courses,
                "prePull": pre_pull or {"enabled": True, "publishAfterPull": True},
                "singleuser": {
                    "memory": {"limit": "1G", "guarantee": "128M"},
                    "cpu": {"guarantee": 0.05},
                    "startTimeoutSeconds": 180,
                    "gpuNodes": {
                        "label": "ol.mit.edu/gpu_node=true",
                        "toleration": f"{GPU_TAINT['key']}={GPU_TAINT['value']}:{GPU_TAINT['effect']}",
                    },
                },
                "values": z2jh,
            },
        }

    def create_hub(self, namespace: str, name: str = "hub", **kw: Any) -> dict:
        """Apply `hub_manifest(namespace, name, **kw)`; returns it (wait with wait_hub_ready)."""
        obj = self.hub_manifest(namespace, name, **kw)
        self.apply(obj)
        return obj

    def condition(self, kind: str, namespace: str, name: str, ctype: str) -> dict:
        obj = self.cluster.get(f"/apis/{GROUP}/v1alpha1/namespaces/{namespace}/{kind}/{name}")
        for c in obj.get("status", {}).get("conditions", []):
            if c["type"] == ctype:
                return c
        return {}

    def wait_hub_ready(self, namespace: str, name: str = "hub", timeout: float = 300) -> None:
        def ready() -> bool:
            return self.condition("jupyterhubdeployments", namespace, name, "Ready").get("status") == "True"

        try:
            wait_until(ready, timeout=timeout, what=f"JupyterHubDeployment {namespace}/{name} Ready")
        except TimeoutError:
            obj = self.cluster.kubectl(
                "get", "jupyterhubdeployment", name, "-n", namespace, "-o", "yaml"
            ).stdout
            pods = self.cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout
            raise TimeoutError(f"{obj}\n{pods}\n{self.operator_log()}") from None

    def wait_course_published(self, namespace: str, name: str, timeout: float = 300) -> dict:
        def published() -> dict | None:
            c = self.condition("courseimages", namespace, name, "Ready")
            return c if c.get("status") == "True" else None

        wait_until(published, timeout=timeout, what=f"CourseImage {namespace}/{name} Ready")
        return self.cluster.get(f"/apis/{GROUP}/v1alpha1/namespaces/{namespace}/courseimages/{name}")

    def hub_url(self, namespace: str, node: str | None = None) -> str:
        """The URL a browser on this machine uses: the proxy's NodePort on a real node's IP."""
        svc = self.cluster.get(f"/api/v1/namespaces/{namespace}/services/proxy-public")
        port = next(p["nodePort"] for p in svc["spec"]["ports"] if p["name"] == "http")
        ip = self.node_ips[node] if node else next(iter(self.node_ips.values()))
        return f"http://{ip}:{port}"

    def launch_url(self, namespace: str, course: str, notebook: str | None = None) -> str:
        """A learner's launch link (DESIGN.md: /hub/tmplogin?course=<slug>[&notebook=<path>])."""
        from urllib.parse import urlencode

        query = {"course": course, **({"notebook": notebook} if notebook else {})}
        return f"{self.hub_url(namespace)}/hub/tmplogin?{urlencode(query)}"

    # -- a learner, over plain HTTP ---------------------------------------------------
    @staticmethod
    def browser() -> requests.Session:
        """A cookie-keeping client that talks to node IPs directly (never through a proxy)."""
        s = requests.Session()
        s.trust_env = False
        return s

    def launch(self, namespace: str, course: str, session: requests.Session) -> str:
        """Open a learner's launch link (and for a GPU course press "Start the GPU server" on the
        confirmation page: a GPU server starts only from a POST); the temporary user's name (from
        where it led)."""
        r = session.get(self.launch_url(namespace, course), timeout=60)
        if 'id="coursehub-gpu-confirm"' in r.text:
            action, fields = _confirmation_form(r.text)
            r = session.post(urljoin(r.url, action), data=fields, timeout=60)
        urls = [h.url for h in r.history] + [r.url]
        for u in urls:
            m = re.search(r"/(?:user|spawn-pending)/([^/?#]+)", u)
            if m:
                return m.group(1)
        raise RuntimeError(f"the launch link led to no user's page: {urls}\n{r.text[:2000]}")

    def lab_version(self, namespace: str, user: str, session: requests.Session) -> str | None:
        """JupyterLab's version from its page (who answered), once the user's server answers
        through the proxy; None before."""
        base = self.hub_url(namespace)
        try:
            r = session.get(f"{base}/user/{user}/lab", timeout=10)
        except requests.RequestException:
            return None
        m = re.search(r'"appVersion":\s*"([^"]+)"', r.text)
        return m.group(1) if m and r.url.startswith(f"{base}/user/{user}/") else None

    def learner_pod(self, namespace: str, user: str) -> dict | None:
        pods = self.cluster.get(
            f"/api/v1/namespaces/{namespace}/pods?labelSelector=component%3Dsingleuser-server"
        )["items"]
        for p in pods:
            if p["metadata"].get("annotations", {}).get("hub.jupyter.org/username") == user:
                return p
        return None

    def hub_api(self, namespace: str, service: str = HUB_API_SERVICE) -> requests.Session:
        """The hub's REST API as a hub service (HUB_API_SERVICE: admin:users, admin:servers), its
        token from the Secret z2jh's chart generates."""
        import base64

        secret = self.cluster.get(f"/api/v1/namespaces/{namespace}/secrets/hub")
        token = base64.b64decode(secret["data"][f"hub.services.{service}.apiToken"]).decode()
        s = self.browser()
        s.headers["Authorization"] = f"token {token}"
        return s

    def make_staff(self, namespace: str, user: str, group: str = DEFAULT_STAFF_GROUP) -> requests.Response:
        """Add a hub user to the staff group, as a platform engineer does: POST to the hub's REST
        API with STAFF_SERVICE's token (staff_values)."""
        api = self.hub_api(namespace, STAFF_SERVICE)
        return api.post(
            f"{self.hub_url(namespace)}/hub/api/groups/{group}/users", json={"users": [user]}, timeout=30
        )

    def node_images(self, node: str) -> list[str]:
        """Image names in a real node's containerd (what kubelet sees as present)."""
        return _ctr(node, "images", "ls", "-q").split()

    def reads_node_images(self, node: str) -> bool:
        """Whether this machine runs the node's containerd (not so on an existing cluster)."""
        return (SOCKET_DIR / node / "containerd.sock").exists()

    def forget_images(self, node: str, *repos: str) -> nodeimages.Forgotten:
        """Remove every image one of whose names contains one of `repos` from a node's containerd,
        completely (a cold node: the next launch pulls and unpacks it): every record of it, the
        CRI plugin's ID record `sha256:<config>` too, after kubelet removed stopped containers
        on it; raises nodeimages.StillPresent naming anything of its own that is left."""
        return nodeimages.forget(nodeimages.Containerd(SOCKET_DIR / node / "containerd.sock", node), repos)

    def write_env(self, path: Path) -> None:
        """What other processes need (kubeconfig, node IPs, registry, images) as JSON."""
        path.write_text(
            json.dumps(
                {
                    "kubeconfig": str(self.cluster.kubeconfig),
                    "registry": self.registry,
                    "node_ips": self.node_ips,
                    "images": self.images,
                },
                indent=1,
            )
        )


def _confirmation_form(page: str) -> tuple[str, dict[str, str]]:
    """The GPU confirmation page's form (coursehub.hub.course_spawner.CONFIRM_TEMPLATE): its
    action and hidden fields (the launch keys and JupyterHub's _xsrf token)."""
    m = re.search(r'<form method="post" action="([^"]*)"', page)
    if m is None:
        raise RuntimeError(f"the GPU confirmation page has no form: {page[:2000]}")
    fields = re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)"', page)
    return html.unescape(m.group(1)), {html.unescape(k): html.unescape(v) for k, v in fields}


def _object_name(slug: str) -> str:
    return slug.lower().replace("_", "-").replace(".", "-")


def _ctr(node: str, *args: str) -> str:
    sock = SOCKET_DIR / node / "containerd.sock"
    return subprocess.run(
        ["ctr", "--address", str(sock), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
