"""Real nodes beside the kwok nodes: containerd + runc + CNI + kubelet, one kube-proxy per machine.

This machine kind (docs/real-nodes.md) has no systemd, a hybrid cgroup v1 hierarchy, root
without CAP_SYS_RESOURCE, no `dummy` link type and no reachable registry. So each node gets
its own containerd (root, state, socket; restrict_oom_score_adj, runc, cgroupfs), its own
kubelet (root dir, cgroup root, pod CIDR; failCgroupV1: false), its node IP on a bridge
without ports, and identities from the dev PKI; images come from images.py through a local
registry. Everything lives under `<state>/realnodes/`; what the parts change on the machine
outside it is saved before (machine.Baseline) and put back by `teardown`.

Only one real-node cluster per machine: the node IPs, bridge names, netfilter chains and
kernel settings are machine-wide. A lock (held by a small process for as long as the nodes
run) says so clearly.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import build, machine, pki
from .cluster import start_logged
from .images import ImageBuilder, images_root
from .registry import OciRegistry, copy_image
from .waiting import free_port, wait_until

if TYPE_CHECKING:
    from .cluster import DevCluster

LOCK_HOLDER_PREFIX = "the dev cluster in "
LOCK_PATH = Path(os.environ.get("COURSEHUB_REAL_NODES_LOCK", "/tmp/coursehub-real-nodes.lock"))
NODE_NET = ipaddress.ip_network("10.210.0.0/24")  # node IPs, one /32 per node bridge
CLUSTER_CIDR = ipaddress.ip_network("10.244.0.0/16")  # pod CIDRs: 10.244.<i>.0/24
SERVICE_CIDR = ipaddress.ip_network("10.0.0.0/24")  # the API server's --service-cluster-ip-range
MAX_NODES = 8
# The host's own address on the node network, on a bridge without ports: the API server,
# the local registry and the cluster DNS listen here, so the host (containerd, kubectl,
# tests) and pods (routed to NODE_NET) reach them under the same name.
HOST_IP = str(NODE_NET[1])
HOST_BRIDGE = "chhost"
# Registries whose images the published z2jh chart names: containerd pulls them from the
# local registry (same repository paths), so the chart runs as published, built here.
MIRRORED_REGISTRIES = ("quay.io", "registry.k8s.io")
# containerd's sandbox image, also the pre-puller's default pause image: the pause built here,
# copied to this name in the local registry, so what a puller pulls is what a pod's sandbox uses.
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
GPU_LABEL = ("ol.mit.edu/gpu_node", "true")
GPU_TAINT = {"key": "ol.mit.edu/gpu_node", "value": "true", "effect": "NoSchedule"}
GPU_RESOURCE = "nvidia.com/gpu"
CNI_BIN = "/usr/lib/cni"
# Sockets (containerd's, and kubelet's under its root dir): a unix socket path has at most
# 107 bytes, too few below a pytest tmp path.
SOCKET_DIR = Path("/run/coursehub-real-nodes")


def mirrored(registry_host: str, image: str) -> str:
    """Where the local registry keeps `image` of a MIRRORED_REGISTRIES registry (its path)."""
    host, _, path = image.partition("/")
    if host not in MIRRORED_REGISTRIES:
        raise ValueError(f"{image}: only images of {', '.join(MIRRORED_REGISTRIES)} are mirrored")
    return f"{registry_host}/{path}"


class RealNodesBusy(RuntimeError):
    pass


@dataclass(frozen=True)
class RealNode:
    index: int
    name: str
    gpu: bool

    @property
    def ip(self) -> str:
        return str(NODE_NET[self.index + 10])

    @property
    def pod_cidr(self) -> str:
        return str(list(CLUSTER_CIDR.subnets(new_prefix=24))[self.index + 1])

    @property
    def node_bridge(self) -> str:
        return f"chnode{self.index}"

    @property
    def pod_bridge(self) -> str:
        return f"chpods{self.index}"

    @property
    def cgroup_root(self) -> str:
        return f"/coursehub-{self.name}"


def plan(count: int) -> list[RealNode]:
    """`count` nodes: real-node-0.., the last one a GPU node (labelled and tainted like
    production) when there are two or more."""
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"--real-nodes must be between 1 and {MAX_NODES}, not {count}")
    nodes = [RealNode(i, f"real-node-{i}", False) for i in range(count)]
    if count >= 2:
        nodes[-1] = RealNode(count - 1, "real-gpu-0", True)
    return nodes


def _cgroup_hierarchies() -> list[Path]:
    return [h for h in sorted(machine.CGROUP_ROOT.iterdir()) if h.is_dir()]


class RealNodes:
    """Starts and stops the real nodes of one DevCluster (state under `<state>/realnodes`)."""

    def __init__(self, cluster: DevCluster, count: int, log: Callable[[str], object] = print) -> None:
        self.cluster = cluster
        self.nodes = plan(count)
        self.log = log
        self.dir = cluster.state_dir / "realnodes"
        self.images = ImageBuilder(log=log)
        self.image_refs: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._previous_holder = ""  # what the lock file said before this cluster took it

    # -- PKI -----------------------------------------------------------------
    @staticmethod
    def write_apiserver_kubelet_client(pki_dir: Path) -> tuple[Path, Path]:
        """The API server's client certificate towards kubelets (logs, exec, port-forward)."""
        return _issue(pki_dir, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")

    def _node_pki(self, node: RealNode, nd: Path) -> None:
        _issue(self.cluster.pki_dir, f"node-{node.name}", f"system:node:{node.name}", "system:nodes", out=nd)
        # Serving certificate with the node IP: the API server verifies kubelets with the CA.
        _issue(
            self.cluster.pki_dir,
            f"kubelet-serving-{node.name}",
            f"system:node:{node.name}",
            "system:nodes",
            out=nd,
            server_ips=(node.ip,),
        )

    def _kubeconfig(self, path: Path, cert: Path, key: Path) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "c",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": self.cluster.server,
                        "certificate-authority": str(self.cluster.pki_dir / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "u", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)

    # -- lifecycle -------------------------------------------------------------
    def reserve(self) -> None:
        """Take the machine's real-node lock and save what `teardown` restores (call first:
        a busy machine fails before the control plane starts)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._remove_leftovers()
        machine.Baseline.take().save(self.dir / "baseline.json")
        (self.dir / "nodes.json").write_text(json.dumps([n.__dict__ for n in self.nodes]))
        # Before the API server starts: it binds this address.
        _ip("link", "add", HOST_BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{HOST_IP}/32", "dev", HOST_BRIDGE)
        _ip("link", "set", HOST_BRIDGE, "up")

    def up(self) -> None:
        started = time.monotonic()
        if not (self.dir / "baseline.json").exists():
            self.reserve()
        binaries = {k: str(v) for k, v in build.build_node_binaries(log=self.log).items()}
        t = time.monotonic()
        reg = self._start_registry()
        self._record_pid(reg._process.pid if reg._process else None)
        self.image_refs = {"pause": self.images.pause(), "base": self.images.base()}
        copy_image(self.image_refs["pause"], mirrored(reg.host, SANDBOX_IMAGE))
        # operator, z2jh's hub, proxy and network-tools, the example courses (warm: 0 s, cached).
        self.image_refs.update(self.images.real_node_images())
        self.timings["images"] = time.monotonic() - t
        (self.dir / "images.json").write_text(json.dumps({**self.image_refs, "registry": reg.host}))
        self._start_dns()
        for node in self.nodes:
            self._start_node(node, binaries)
        self._start_kube_proxy(binaries)
        self._wait_ready()
        for node in self.nodes:
            if node.gpu:
                self._advertise_gpu(node)
        self.timings["total"] = time.monotonic() - started
        self.log(
            f"[realnodes] {len(self.nodes)} real node(s) Ready in {self.timings['total']:.1f}s "
            f"(images {self.timings['images']:.1f}s): {', '.join(n.name for n in self.nodes)}"
        )

    def _start_registry(self) -> OciRegistry:
        """The images' registry on HOST_IP (blobs in the image cache, so they outlive `down`)."""
        workdir = self.dir / "registry"
        workdir.mkdir(parents=True, exist_ok=True)
        reg = OciRegistry(workdir, address=HOST_IP)
        config = json.loads(reg.config_path.read_text())
        storage = images_root() / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        config["storage"]["filesystem"]["rootdirectory"] = str(storage)
        reg.config_path.write_text(json.dumps(config, indent=2))
        reg.start()
        self.images.registry, self.images.registry_host = reg, reg.host
        return reg

    def _start_dns(self) -> None:
        self._popen(
            "clusterdns",
            [
                sys.executable,
                "-m",
                "coursehub_dev.clusterdns",
                HOST_IP,
                self.cluster.server,
                str(self.cluster.pki_dir),
            ],
        )
        (self.dir / "resolv.conf").write_text(f"nameserver {HOST_IP}\noptions ndots:5\n")

    def _take_lock(self) -> None:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RealNodesBusy(
                f"real nodes already run on this machine (lock {LOCK_PATH} held by {holder}); "
                "only one real-node cluster fits one machine: stop it with `coursehub-dev down` "
                "(in its state dir) first"
            ) from None
        self._previous_holder = os.read(fd, 4096).decode(errors="replace").strip()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{LOCK_HOLDER_PREFIX}{self.cluster.state_dir}\n".encode())
        # A process of its own keeps the lock for as long as the nodes run (`up` exits).
        lock_holder = subprocess.Popen(
            ["sleep", "infinity"],
            pass_fds=(fd,),
            start_new_session=True,
            # No inherited stdout: a pipe reading `up` must see its end when `up` exits.
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(fd)
        self._record_pid(lock_holder.pid)

    def _remove_leftovers(self) -> None:
        """A cluster whose process died without `down` (a killed test run) leaves its nodes'
        bridges and its machine changes behind, and the next `up` would fail on them. With the
        lock held no other real-node cluster runs: bring the previous holder down if its state
        is still on disk, then delete any bridge of ours that is left."""
        from .cluster import DevCluster

        previous = self._previous_holder.removeprefix(LOCK_HOLDER_PREFIX)
        if previous and Path(previous) != self.cluster.state_dir and (Path(previous) / "pids").exists():
            self.log(f"[realnodes] the previous real-node cluster ({previous}) is still up: down now")
            DevCluster(state_dir=Path(previous), log=self.log).down()
        ours = [b for node in plan(MAX_NODES) for b in (node.node_bridge, node.pod_bridge)] + [HOST_BRIDGE]
        for br in ours:
            if Path(f"/sys/class/net/{br}").exists():
                self.log(f"[realnodes] removing the left-over bridge {br}")
                _ip("link", "delete", br)

    @staticmethod
    def images_of(state_dir: Path) -> dict[str, str]:
        """The running cluster's image references (pause, base) and its registry's host."""
        return json.loads((state_dir / "realnodes" / "images.json").read_text())

    @staticmethod
    def image_builder(state_dir: Path, log: Callable[[str], object] = print) -> ImageBuilder:
        """Builds more images (course images) into the running cluster's registry."""
        return ImageBuilder.attach(RealNodes.images_of(state_dir)["registry"], log=log)

    def _record_pid(self, pid: int | None) -> None:
        if pid is None:
            return
        with open(self.dir / "pids", "a") as f:
            f.write(f"{pid}\n")

    def _popen(self, name: str, argv: list[str]) -> subprocess.Popen:
        # Beside the control plane's logs, so that a failed `up` shows them too.
        proc = start_logged(argv, log=self.cluster.state_dir / "logs" / f"{name}.log", cwd=self.dir)
        self._record_pid(proc.pid)
        self.cluster._procs[name] = proc  # its exit aborts the cluster's waits
        return proc

    def _start_node(self, node: RealNode, binaries: dict[str, str]) -> None:
        nd = self.dir / node.name
        nd.mkdir(parents=True, exist_ok=True)
        self._node_pki(node, nd)
        self._network(node)
        self._cgroup_root(node)
        sock = SOCKET_DIR / node.name / "containerd.sock"
        sock.parent.mkdir(parents=True, exist_ok=True)
        self._write_containerd_config(node, nd, sock)
        self._popen(f"containerd-{node.name}", ["containerd", "--config", str(nd / "containerd.toml")])
        wait_until(sock.exists, timeout=30, what=f"containerd of {node.name}", abort=self.cluster._exited)
        self._kubeconfig(nd / "kubeconfig", nd / f"node-{node.name}.crt", nd / f"node-{node.name}.key")
        (nd / "kubelet.yaml").write_text(yaml.safe_dump(self._kubelet_config(node, nd, sock)))
        labels = ["coursehub.dev/real-node=true", "type=real"]
        if node.gpu:
            labels.append(f"{GPU_LABEL[0]}={GPU_LABEL[1]}")
        self._popen(
            f"kubelet-{node.name}",
            [
                binaries["kubelet"],
                f"--config={nd / 'kubelet.yaml'}",
                f"--kubeconfig={nd / 'kubeconfig'}",
                f"--root-dir={SOCKET_DIR / node.name / 'kubelet'}",
                f"--cert-dir={nd / 'kubelet-pki'}",
                f"--hostname-override={node.name}",
                f"--node-ip={node.ip}",
                f"--node-labels={','.join(labels)}",
                "--v=1",
            ],
        )

    def _network(self, node: RealNode) -> None:
        # The node IP on a bridge without ports: this kernel has no `dummy` links.
        _ip("link", "add", node.node_bridge, "type", "bridge")
        _ip("addr", "add", f"{node.ip}/32", "dev", node.node_bridge)
        _ip("link", "set", node.node_bridge, "up")

    def _cgroup_root(self, node: RealNode) -> None:
        # kubelet refuses a cgroup root that does not exist; cpuset needs cpus/mems to hold tasks.
        for h in _cgroup_hierarchies():
            d = h / node.cgroup_root.lstrip("/")
            d.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (d / f).exists():
                    (d / f).write_text((h / f).read_text())

    def _write_containerd_config(self, node: RealNode, nd: Path, sock: Path) -> None:
        assert self.images.registry is not None
        host = self.images.registry.host
        # The local registry under its own name, and as the only source of the registries
        # the z2jh chart names (no fallback: nothing is pulled from beyond the machine).
        for name in (host, *MIRRORED_REGISTRIES):
            certs = nd / "certs.d" / name
            certs.mkdir(parents=True, exist_ok=True)
            (certs / "hosts.toml").write_text(
                f'server = "http://{host}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n'
            )
        cni = nd / "cni"
        cni.mkdir(exist_ok=True)
        (cni / "10-coursehub.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": f"coursehub-{node.name}",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": node.pod_bridge,
                            "isGateway": True,
                            # Pod traffic stays on this machine's own interfaces: no NAT to the egress.
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": node.pod_cidr}]],
                                # Routes to pods, Services and nodes only, no default route:
                                # nothing a pod sends leaves the machine.
                                "routes": [{"dst": str(n)} for n in (CLUSTER_CIDR, SERVICE_CIDR, NODE_NET)],
                                "dataDir": str(nd / "cni-ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            )
        )
        toml = f"""version = 2
root = "{nd / "containerd-root"}"
state = "{nd / "containerd-state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{nd / "containerd-opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{nd / "certs.d"}"
"""
        (nd / "containerd.toml").write_text(toml)

    def _kubelet_config(self, node: RealNode, nd: Path, sock: Path) -> dict:
        ca = str(self.cluster.pki_dir / "ca.crt")
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this VM is hybrid cgroup v1
            "cgroupDriver": "cgroupfs",  # no systemd
            "cgroupRoot": node.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{sock}",
            "address": node.ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "tlsCertFile": str(nd / f"kubelet-serving-{node.name}.crt"),
            "tlsPrivateKeyFile": str(nd / f"kubelet-serving-{node.name}.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": ca},
            },
            "authorization": {"mode": "Webhook"},
            "podLogsDir": str(nd / "pod-logs"),
            "volumePluginDir": str(nd / "volume-plugins"),
            "registerWithTaints": [GPU_TAINT] if node.gpu else [],
            "failSwapOn": False,
            "serializeImagePulls": False,
            # Pods resolve through the cluster DNS on the host bridge (clusterdns.py), which
            # knows Service names only: no name a pod looks up is sent off the machine.
            "resolvConf": str(self.dir / "resolv.conf"),
            "clusterDNS": [HOST_IP],
            "clusterDomain": "cluster.local",
            # A shared 2-core VM with a mostly full disk must not evict the tests' pods.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusReportFrequency": "10s",
        }

    def _start_kube_proxy(self, binaries: dict[str, str]) -> None:
        kp = self.dir / "kube-proxy"
        kp.mkdir(exist_ok=True)
        _issue(self.cluster.pki_dir, "kube-proxy", "system:kube-proxy", None, out=kp)
        self._kubeconfig(kp / "kubeconfig", kp / "kube-proxy.crt", kp / "kube-proxy.key")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kp / "kubeconfig")},
            "hostnameOverride": self.nodes[0].name,
            "clusterCIDR": str(CLUSTER_CIDR),
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # 0: leave the machine's conntrack settings alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            # No NodePorts on 127.0.0.1 (that needs route_localnet); the node IPs only.
            "iptables": {"localhostNodePorts": False},
            "nodePortAddresses": [str(NODE_NET)],
        }
        (kp / "config.yaml").write_text(yaml.safe_dump(config))
        self._popen("kube-proxy", [binaries["kube-proxy"], f"--config={kp / 'config.yaml'}", "--v=1"])

    def _wait_ready(self) -> None:
        names = {n.name for n in self.nodes}

        def ready() -> bool:
            items = self.cluster.get("/api/v1/nodes")["items"]
            ok = {
                n["metadata"]["name"]
                for n in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            }
            return names <= ok

        wait_until(ready, timeout=180, what=f"real nodes {sorted(names)} Ready", abort=self.cluster._exited)

    def _advertise_gpu(self, node: RealNode) -> None:
        # No device plugin here: the capacity is advertised as an extended resource
        # (the node status subresource), which kubelet keeps and copies into allocatable.
        patch = json.dumps({"status": {"capacity": {GPU_RESOURCE: "1"}}})
        self.cluster.kubectl("patch", "node", node.name, "--subresource=status", "--type=merge", "-p", patch)

        def allocatable() -> bool:
            n = self.cluster.get(f"/api/v1/nodes/{node.name}")
            return n["status"].get("allocatable", {}).get(GPU_RESOURCE) == "1"

        wait_until(allocatable, timeout=60, what=f"{GPU_RESOURCE} allocatable on {node.name}")


def teardown(state_dir: Path, log: Callable[[str], object] = print) -> None:
    """Stop the real nodes of the cluster in `state_dir` and restore the machine.

    Idempotent; works from another process than `up` (everything it needs is on disk).
    """
    rdir = state_dir / "realnodes"
    if not rdir.exists():
        return
    if not (rdir / "baseline.json").exists():
        # It never got the lock: the machine-wide parts belong to another cluster.
        shutil.rmtree(rdir, ignore_errors=True)
        return
    started = time.monotonic()
    nodes = (
        [RealNode(**n) for n in json.loads((rdir / "nodes.json").read_text())]
        if (rdir / "nodes.json").exists()
        else []
    )
    pids = [int(x) for x in (rdir / "pids").read_text().split()] if (rdir / "pids").exists() else []
    # kubelets and kube-proxy first (they would restart what goes next), then every
    # container process, then the shims and containerd, and the lock holder last.
    procs = {pid: _comm(pid) for pid in pids}
    order = ("kubelet", "kube-proxy", "registry", "containerd", "sleep")
    for kind in order:
        group = [p for p, c in procs.items() if kind in (c or "")]
        if kind == "containerd":
            _kill_cgroups(nodes)
            group += _shims()
        _stop(group)
    _stop([p for p, c in procs.items() if c is not None])  # anything else recorded
    _kill_cgroups(nodes)
    _unmount_under([str(rdir), "/run/containerd", "/run/netns", "/var/run/netns", str(SOCKET_DIR)])
    _remove_cgroups(nodes)
    for br in [b for node in nodes for b in (node.pod_bridge, node.node_bridge)] + [HOST_BRIDGE]:
        subprocess.run(["ip", "link", "delete", br], capture_output=True)
    baseline = rdir / "baseline.json"
    if baseline.exists():
        changed = machine.Baseline.load(baseline).restore(log=log)
        log(f"[realnodes] machine restored ({len(changed)} changes undone)")
    shutil.rmtree(SOCKET_DIR, ignore_errors=True)
    shutil.rmtree(rdir, ignore_errors=True)
    log(f"[realnodes] down in {time.monotonic() - started:.1f}s")


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _shims() -> list[int]:
    """containerd-shim-runc-v2 processes of our containerds (they leave containerd's session)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmd
            and cmd[0].endswith(b"containerd-shim-runc-v2")
            and any(str(SOCKET_DIR).encode() in a for a in cmd)
        ):
            found.append(int(d.name))
    return found


def _stop(pids: list[int], grace: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    for pid in pids:
        end = time.monotonic() + 5
        while time.monotonic() < end and _alive(pid):
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_cgroups(nodes: list[RealNode]) -> None:
    """SIGKILL every process in the nodes' cgroups (the containers)."""
    for _ in range(20):
        pids = set()
        for node in nodes:
            for h in _cgroup_hierarchies():
                root = h / node.cgroup_root.lstrip("/")
                for procs in root.rglob("cgroup.procs") if root.exists() else []:
                    with contextlib.suppress(OSError):
                        pids |= {int(x) for x in procs.read_text().split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _remove_cgroups(nodes: list[RealNode]) -> None:
    for node in nodes:
        for h in _cgroup_hierarchies():
            root = h / node.cgroup_root.lstrip("/")
            if not root.exists():
                continue
            dirs = sorted(
                (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            )
            for d in [*dirs, root]:
                for _ in range(50):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)


def _unmount_under(prefixes: list[str]) -> None:
    for _ in range(5):
        targets = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4].replace("\\040", " ")
            if any(target == p or target.startswith(p.rstrip("/") + "/") for p in prefixes):
                targets.append(target)
        if not targets:
            return
        for t in sorted(set(targets), key=len, reverse=True):
            if subprocess.run(["umount", t], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", t], capture_output=True)


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")


def _issue(
    pki_dir: Path,
    name: str,
    cn: str,
    org: str | None,
    *,
    out: Path | None = None,
    server_ips: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """A certificate from the dev CA (client, or serving when `server_ips` are given)."""
    out = out or pki_dir
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), password=None)
    key = pki._key()
    usages = (ExtendedKeyUsageOID.SERVER_AUTH,) if server_ips else (ExtendedKeyUsageOID.CLIENT_AUTH,)
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in server_ips] or None
    cert = pki._cert(
        pki._name(cn, org), ca_cert.subject, key.public_key(), ca_key, ca=False, sans=sans, usages=usages
    )
    crt, k = out / f"{name}.crt", out / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(pki._pem_key(key))
    k.chmod(0o600)
    return crt, k
