"""What real nodes change on the machine, captured so that `down` can put it back exactly.

kubelet writes sysctls, the CNI plugins set ip_forward and write under /var/lib/cni,
kube-proxy, kubelet and portmap add netfilter tables and chains, kubelet links logs into
/var/log/containers, containerd mounts and creates network namespaces and shim sockets.
`snapshot()` is the machine's state in those respects, comparable with `==`; the tests
compare one taken before `up` with one taken after `down`. `Baseline` is what `up` saves
so that `down` restores it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

# Places the node parts write to outside their own directories (defaults they cannot all
# be talked out of).
WATCHED_PATHS = (
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/run/netns",
    "/opt/containerd",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/etc/cni",
    "/etc/kubernetes",
    "/usr/libexec/kubernetes",
    "/run/runc",
    "/run/coursehub-real-nodes",  # realnodes.SOCKET_DIR
)
# sysctls the parts are known to write (kubelet's kernel defaults, the CNI bridge's
# forwarding, kube-proxy's conntrack and localnet settings).
KNOWN_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/bridge/bridge-nf-call-iptables",
)
# Counters and other keys the kernel changes by itself.
_VOLATILE_SYSCTL = re.compile(
    r"^(fs/(dentry-state|file-nr|inode-nr|inode-state|quota/.*)|kernel/(random/.*|ns_last_pid|pty/nr|tainted)"
    r"|net/netfilter/nf_conntrack_count|.*/stable_secret|vm/stat_refresh|vm/drop_caches|fs/binfmt_misc/.*"
    r"|net/ipv6/route/flush|net/ipv4/route/flush|vm/compact_memory)$"
)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def sysctls() -> dict[str, str]:
    out: dict[str, str] = {}
    base = Path("/proc/sys")
    for dirpath, _dirs, files in os.walk(base):
        for f in files:
            p = Path(dirpath) / f
            key = str(p.relative_to(base))
            if _VOLATILE_SYSCTL.match(key):
                continue
            try:
                if not os.access(p, os.R_OK) or not (p.stat().st_mode & 0o444):
                    continue
                out[key] = p.read_text().strip()
            except OSError:
                continue
    return out


def nft_tables() -> dict[str, str]:
    """`family name` -> the table's rules (stateless: no counters)."""
    text = _run("nft", "-s", "list", "ruleset")
    tables: dict[str, str] = {}
    current: list[str] = []
    key = ""
    for line in text.splitlines():
        if line.startswith("table "):
            key = " ".join(line.split()[1:3])
            current = [line]
        elif current:
            current.append(line)
            if line == "}":
                tables[key] = "\n".join(current) + "\n"
                current = []
    return tables


def tree(path: str) -> list[str]:
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return []
    out = [path]
    for dirpath, dirs, files in os.walk(p):
        for n in dirs + files:
            out.append(os.path.join(dirpath, n))
    return sorted(out)


def cgroups() -> list[str]:
    """Each hierarchy's top-level groups (kubelet's cgroup roots live there)."""
    out = []
    if CGROUP_ROOT.is_dir():
        for h in sorted(CGROUP_ROOT.iterdir()):
            if h.is_dir():
                out += sorted(str(c) for c in h.iterdir() if c.is_dir())
    return out


def mounts() -> list[str]:
    from .images import images_root

    # Image builds (buildah, beside any cluster) mount and unmount in their own storage.
    builds = str(images_root()) + "/"
    rows = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if not fields[4].startswith(builds):
            rows.append(f"{fields[4]} {fields[sep + 1]}")
    return sorted(rows)


def links() -> list[str]:
    rows = []
    for line in _run("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        rows.append(name)
    return sorted(rows)


def addresses() -> list[str]:
    return sorted(" ".join(line.split()[1:4]) for line in _run("ip", "-o", "addr", "show").splitlines())


def routes() -> list[str]:
    return sorted(_run("ip", "route", "show", "table", "all").splitlines())


def node_processes() -> list[str]:
    """Processes of the node parts (none of them may outlive `down`)."""
    names = ("containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy", "pause", "runc")
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            # The executable's name (comm is cut at 15 characters).
            exe = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
        except OSError:
            continue
        if exe in names:
            found.append(f"{d.name} {exe}")
    return sorted(found)


@dataclass
class Snapshot:
    sysctls: dict[str, str]
    nft: dict[str, str]
    paths: dict[str, list[str]]
    cgroups: list[str]
    mounts: list[str]
    links: list[str]
    addresses: list[str]
    routes: list[str]
    processes: list[str]

    def differences(self, other: Snapshot) -> list[str]:
        """Human-readable differences from `other` (empty when the machine is as it was)."""
        out = []
        a, b = asdict(self), asdict(other)
        for k in a:
            if a[k] == b[k]:
                continue
            if isinstance(a[k], dict):
                for key in sorted(set(a[k]) | set(b[k])):
                    if a[k].get(key) != b[k].get(key):
                        out.append(f"{k}[{key}]: {a[k].get(key)!r} -> {b[k].get(key)!r}")
            else:
                gone = sorted(set(a[k]) - set(b[k]))
                new = sorted(set(b[k]) - set(a[k]))
                out.append(f"{k}: gone {gone[:20]}, new {new[:20]}")
        return out


def snapshot() -> Snapshot:
    return Snapshot(
        sysctls=sysctls(),
        nft=nft_tables(),
        paths={p: tree(p) for p in WATCHED_PATHS},
        cgroups=cgroups(),
        mounts=mounts(),
        links=links(),
        addresses=addresses(),
        routes=routes(),
        processes=node_processes(),
    )


@dataclass
class Baseline:
    """What `up` saves (as JSON in the cluster's state) and `down` restores."""

    sysctls: dict[str, str]
    nft: dict[str, str]
    paths: dict[str, list[str]]
    links: list[str]
    mounts: list[str]

    @classmethod
    def take(cls) -> Baseline:
        known = {}
        for k in KNOWN_SYSCTLS:
            p = Path("/proc/sys") / k
            if p.exists():
                known[k] = p.read_text().strip()
        return cls(
            sysctls=known,
            nft=nft_tables(),
            paths={p: tree(p) for p in WATCHED_PATHS},
            links=links(),
            mounts=mounts(),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Baseline:
        return cls(**json.loads(path.read_text()))

    def restore(self, log=print) -> list[str]:
        """Put back netfilter tables, sysctls, watched paths and links; returns what it changed.

        Call after every node process has stopped and its mounts are gone.
        """
        changed: list[str] = []
        # Netfilter: tables created since go; tables that existed get their old rules back.
        now = nft_tables()
        for key, text in now.items():
            if self.nft.get(key) == text:
                continue
            family, name = key.split()
            subprocess.run(["nft", "delete", "table", family, name], check=True)
            changed.append(f"nft table {key}")
            if key in self.nft:
                subprocess.run(["nft", "-f", "-"], input=self.nft[key], text=True, check=True)
        for key, text in self.nft.items():
            if key not in now:
                subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True)
                changed.append(f"nft table {key} (re-created)")
        for k, v in self.sysctls.items():
            p = Path("/proc/sys") / k
            if p.exists() and p.read_text().strip() != v:
                p.write_text(v)
                changed.append(f"sysctl {k}={v}")
        # Files: whatever is new under the watched paths goes (deepest first).
        for root, before in self.paths.items():
            keep = set(before)
            for entry in sorted(tree(root), key=len, reverse=True):
                if entry in keep:
                    continue
                p = Path(entry)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                changed.append(f"removed {entry}")
        for name in sorted(set(links()) - set(self.links)):
            subprocess.run(["ip", "link", "delete", name], capture_output=True)
            changed.append(f"link {name}")
        return changed
