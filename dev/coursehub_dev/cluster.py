"""Run a real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager,
scheduler and kwok (fake nodes whose pods really go Running/Ready).

The same class serves `coursehub-dev up|down|env` and the pytest session fixture. Every
process it starts is recorded in `<state>/pids`, so `down` (or a crashed test session's
next `up`) can stop them; `down` removes the state directory, so no data is left behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import build, pki
from .paths import Z2JH_CHART
from .waiting import free_port, wait_until

GPU_LABEL = ("ol.mit.edu/gpu_node", "true")
GPU_TAINT = {"key": "ol.mit.edu/gpu_node", "value": "true", "effect": "NoSchedule"}
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def node_manifest(name: str, *, gpu: bool) -> dict:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    spec: dict = {}
    if gpu:
        labels[GPU_LABEL[0]] = GPU_LABEL[1]
        capacity["nvidia.com/gpu"] = "4"
        spec["taints"] = [GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
        },
    }


def start_logged(argv: list[str], *, log: Path, cwd: Path) -> subprocess.Popen:
    """Start a long-lived process appending to `log`, in a session of its own so that `down`
    can stop it and its children. The child keeps its own copy of the log's descriptor."""
    with open(log, "ab") as logf:
        return subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )


@dataclass
class DevCluster:
    state_dir: Path
    nodes: tuple[tuple[str, bool], ...] = (
        ("kwok-node-0", False),
        ("kwok-node-1", False),
        ("kwok-gpu-0", True),
    )
    log: Callable[[str], object] = print
    real_nodes: int = 0  # real nodes (realnodes.py) beside the kwok ones; 0: kwok only
    ports: dict = field(default_factory=dict)
    binaries: dict = field(default_factory=dict)
    _procs: dict = field(default_factory=dict)

    # -- paths -------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def address(self) -> str:
        """Where the API server listens: loopback, or with real nodes the host bridge address,
        which pods route to (the default Service's endpoint; realnodes.HOST_IP)."""
        if "address" in self.ports:
            return self.ports["address"]
        if self.real_nodes:
            from .realnodes import HOST_IP

            return HOST_IP
        return "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports['apiserver']}"

    def env(self) -> dict[str, str]:
        """Environment for tools pointed at this cluster (kubectl, helm, the operator)."""
        bin_dirs = sorted({str(Path(p).parent) for p in self.binaries.values()})
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")]),
        }
        if "helm" in self.binaries:
            # The operator finds helm through this (or PATH); the wheel knows no build cache.
            env["COURSEHUB_HELM"] = self.binaries["helm"]
        # Hubs here install the published z2jh chart from its .tgz: the operator's chart
        # policy allows only the official repository unless told (desired/policy.py).
        env.setdefault("COURSEHUB_CHART_PATHS", str(Z2JH_CHART))
        return env

    # -- lifecycle ---------------------------------------------------------
    def up(self, crds: list[Path] | None = None) -> DevCluster:
        self.down(quiet=True)  # leftovers of a crashed run must not hold ports or data
        started = time.monotonic()
        self.binaries = {k: str(v) for k, v in build.build_all(log=self.log).items()}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self.ports = {"etcd": free_port(), "etcd_peer": free_port(), "apiserver": free_port()}
        self.ports["address"] = self.address
        extra_ips = () if self.address == "127.0.0.1" else (self.address,)
        pki.write_pki(self.pki_dir, extra_ips=extra_ips)
        (self.state_dir / "ports.json").write_text(json.dumps(self.ports))
        self._write_kubeconfig()
        try:
            if self.real_nodes:
                from .realnodes import RealNodes

                real = RealNodes(self, self.real_nodes, log=self.log)
                real.reserve()  # a machine whose real nodes are taken fails here, first
            self._start_etcd()
            self._start_apiserver()
            self._start("kube-controller-manager", self._controller_manager_args())
            self._start(
                "kube-scheduler",
                [
                    self.binaries["kube-scheduler"],
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                ],
            )
            self._start_kwok()
            self._register_nodes()
            self._wait_for(self._default_service_account_exists, "the default ServiceAccount", 60)
            self._wait_for(self._nodes_ready, "kwok nodes Ready", 60)
            if crds:
                self.kubectl("apply", "--server-side", *(a for p in crds for a in ("-f", str(p))))
                for p in crds:
                    name = yaml.safe_load(p.read_text())["metadata"]["name"]
                    self.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
            # What the operator's chart installs beside the CRDs: the ClusterRole that Helm,
            # impersonating each hub's ServiceAccount, gets in the hub's namespace.
            from coursehub.desired.tenancy import tenant_cluster_role

            self.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(tenant_cluster_role()))
            if self.real_nodes:
                real.up()
        except BaseException:
            self.log(self.tail_logs())
            self.down(quiet=True)
            raise
        self.log(
            f"[devcluster] up in {time.monotonic() - started:.1f}s: {self.server} "
            f"(export KUBECONFIG={self.kubeconfig})"
        )
        return self

    def down(self, quiet: bool = False) -> None:
        from .realnodes import teardown

        # Real nodes first: their containers, mounts and the machine settings they changed.
        teardown(self.state_dir, log=self.log)
        pid_file = self.state_dir / "pids"
        pids = []
        if pid_file.exists():
            pids = [int(x) for x in pid_file.read_text().split() if x.strip()]
        pids += [p.pid for p in self._procs.values()]
        for pid in set(pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pid in set(pids):
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for p in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self._procs.clear()
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
            if not quiet:
                self.log(f"[devcluster] down: stopped {len(set(pids))} processes, removed {self.state_dir}")

    # -- processes ---------------------------------------------------------
    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        proc = start_logged(argv, log=self.state_dir / "logs" / f"{name}.log", cwd=self.state_dir)
        self._procs[name] = proc
        with open(self.state_dir / "pids", "a") as f:
            f.write(f"{proc.pid}\n")
        return proc

    def stop_process(self, name: str, grace: float = 10) -> None:
        """Stop one component (fault tests: the API server going away); data stays.

        The API server drains watches for up to a minute on SIGTERM; after `grace` seconds
        it is killed, as a crashed one would be.
        """
        proc = self._procs.pop(name)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def start_apiserver(self) -> None:
        self._start_apiserver()

    def start_kwok(self) -> None:
        self._start_kwok()

    def _start_etcd(self) -> None:
        p = self.ports
        self._start(
            "etcd",
            [
                self.binaries["etcd"],
                f"--data-dir={self.state_dir / 'etcd'}",
                "--name=default",
                f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
                f"--initial-cluster=default=http://127.0.0.1:{p['etcd_peer']}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        self._wait_for(lambda: _http_ok(f"http://127.0.0.1:{p['etcd']}/health"), "etcd", 30)

    def _apiserver_args(self) -> list[str]:
        k = self.pki_dir
        return [
            self.binaries["kube-apiserver"],
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            # Real nodes: the host bridge address, so pods reach it through the default
            # Service (its endpoint is the advertised address); otherwise loopback only.
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={k / 'apiserver.crt'}",
            f"--tls-private-key-file={k / 'apiserver.key'}",
            f"--client-ca-file={k / 'ca.crt'}",
            f"--service-account-key-file={k / 'sa.pub'}",
            f"--service-account-signing-key-file={k / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            "--profiling=false",
            "--v=1",
            *self._kubelet_client_args(),
        ]

    def _kubelet_client_args(self) -> list[str]:
        """Logs, exec and port-forward reach real kubelets at their node IP, both sides verified."""
        if not self.real_nodes:
            return []
        from .realnodes import RealNodes

        crt, key = RealNodes.write_apiserver_kubelet_client(self.pki_dir)
        return [
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={crt}",
            f"--kubelet-client-key={key}",
            f"--kubelet-certificate-authority={self.pki_dir / 'ca.crt'}",
        ]

    def _start_apiserver(self) -> None:
        self._start("kube-apiserver", self._apiserver_args())
        self._wait_for(self.apiserver_ready, "kube-apiserver /readyz", 90)

    def _controller_manager_args(self) -> list[str]:
        k = self.pki_dir
        return [
            self.binaries["kube-controller-manager"],
            f"--kubeconfig={self.kubeconfig}",
            f"--service-account-private-key-file={k / 'sa.key'}",
            f"--root-ca-file={k / 'ca.crt'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            "--concurrent-gc-syncs=5",
            "--v=1",
        ]

    def _start_kwok(self) -> None:
        self._start(
            "kwok",
            [
                self.binaries["kwok"],
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-ip=10.0.0.2",
                "--cidr=10.1.0.0/16",
                "--server-address=127.0.0.1:0",
                "--node-lease-duration-seconds=40",
            ],
        )

    def _register_nodes(self) -> None:
        docs = [node_manifest(name, gpu=gpu) for name, gpu in self.nodes]
        path = self.state_dir / "nodes.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        self.kubectl("apply", "-f", str(path))

    # -- checks ------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.server + path, context=self._ssl(), timeout=5) as r:
            return json.loads(r.read())

    def apiserver_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.server + "/readyz", context=self._ssl(), timeout=3) as r:
                return r.status == 200
        except Exception:
            return False

    def _default_service_account_exists(self) -> bool:
        try:
            self.get("/api/v1/namespaces/default/serviceaccounts/default")
            return True
        except Exception:
            return False

    def _nodes_ready(self) -> bool:
        nodes = self.get("/api/v1/nodes")["items"]
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) >= len(self.nodes)

    def _wait_for(self, check, what: str, timeout: float) -> None:
        wait_until(check, timeout=timeout, what=what, abort=self._exited)

    def _exited(self) -> str | None:
        """Why waiting is pointless: a component this object started has exited."""
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None

    def tail_logs(self, lines: int = 30) -> str:
        out = []
        for f in (
            sorted((self.state_dir / "logs").glob("*.log")) if (self.state_dir / "logs").exists() else []
        ):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    # -- tools -------------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        return run_kubectl(self.binaries["kubectl"], args, env=self.env(), input=input, check=check)

    def _write_kubeconfig(self) -> None:
        k = self.pki_dir

        def b64(name: str) -> str:
            return base64.b64encode((k / name).read_bytes()).decode()

        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "coursehub-dev",
            "clusters": [
                {
                    "name": "coursehub-dev",
                    "cluster": {"server": self.server, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "coursehub-dev", "context": {"cluster": "coursehub-dev", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))
        self.kubeconfig.chmod(0o600)

    @classmethod
    def attach(cls, state_dir: Path) -> DevCluster:
        """A handle on a cluster that `up` started in another process (for `env` and `down`)."""
        c = cls(state_dir=state_dir)
        ports = state_dir / "ports.json"
        if ports.exists():
            c.ports = json.loads(ports.read_text())
        c.binaries = {}
        for comp in build.components():
            for b in comp.binaries:
                c.binaries[b] = str(comp.path(b))
        return c


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[1:])} failed ({self.returncode}): {self.stderr.strip()}"


def run_kubectl(
    kubectl: str, args: tuple[str, ...], *, env: dict[str, str], input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """kubectl with ``args`` (``input`` on stdin); ``check``: a failure raises KubectlError with its
    stderr. The one runner behind DevCluster.kubectl and ExistingCluster.kubectl."""
    res = subprocess.run([kubectl, *args], input=input, capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        raise KubectlError(res.returncode, res.args, res.stdout, res.stderr)
    return res


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False
