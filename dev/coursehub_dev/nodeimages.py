"""What a real node's containerd holds of an image, and forgetting an image for real (a cold node).

Why removing the names that spell a repository is not enough (bench_real_nodes measured "not
pre-pulled" launches of 2.6 s, as fast as pre-pulled ones):

- containerd's CRI plugin records every image it pulls under several names: the reference it was
  asked for, `repo@sha256:<manifest>`, and the image's ID `sha256:<config digest>`. The ID record
  names no repository, and while it exists the image's blobs and unpacked layers stay: the next
  "pull" of the repository's name fetches nothing and unpacks nothing.
- A stopped container keeps its rootfs snapshot, whose parents are the image's unpacked layers.
  kubelet removes the containers of a deleted pod either when it sees them exit (only if the pod
  is already gone from the API then) or in its container GC, once a minute; until then a pull
  downloads the blobs again but unpacks nothing.

`forget` therefore removes every record whose target is one of the images (so the ID record
too), waits for kubelet to remove stopped containers built on them, collects garbage
synchronously, and checks that the images' own blobs and layer snapshots are gone. Layers that
an image staying on the node shares (the Debian base under the hub and the operator) stay, and
the result says so. Pure parts (`parse_*`, `chain_ids`, `plan_forget`) are unit-tested.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .waiting import wait_until

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True)
class ImageRecord:
    """One name in containerd's image store and the digest it points at (a manifest or index)."""

    name: str
    target: str


@dataclass(frozen=True)
class Snapshot:
    key: str
    parent: str
    kind: str  # Committed (an unpacked layer, key = its chain ID), Active (a container's rootfs), View


@dataclass
class ImageParts:
    """What one image occupies: its blobs (index, manifests, config, layers) present in the
    content store, the compressed size of each layer, and the chain IDs of its unpacked layers."""

    blobs: set[str] = field(default_factory=set)
    layer_sizes: dict[str, int] = field(default_factory=dict)
    chains: set[str] = field(default_factory=set)


@dataclass
class ForgetPlan:
    names: list[str]  # every record to remove (the ID records `sha256:...` included)
    blobs: set[str]  # blobs only these images use: must be gone afterwards
    chains: set[str]  # layer snapshots only these images use: must be gone afterwards
    layer_bytes: int  # compressed size of the layers only these images use
    kept: dict[str, list[str]]  # shared layer digest -> names of images that stay and use it


@dataclass
class Forgotten:
    """What `forget` removed from a node, for the benchmark to print."""

    node: str
    names: list[str] = field(default_factory=list)
    blobs: int = 0
    layers: int = 0
    layer_bytes: int = 0
    kept: dict[str, list[str]] = field(default_factory=dict)
    waited_for: list[str] = field(default_factory=list)  # stopped containers kubelet removed first
    waited_seconds: float = 0.0

    def __str__(self) -> str:
        if not self.names:
            return f"{self.node}: nothing to forget"
        kept = (
            f"; kept {len(self.kept)} layer(s) shared with images that stay "
            f"({', '.join(sorted({n for ns in self.kept.values() for n in ns}))})"
            if self.kept
            else ""
        )
        waited = (
            f"; waited {self.waited_seconds:.1f}s for kubelet to remove {len(self.waited_for)} stopped "
            "container(s) on them"
            if self.waited_for
            else ""
        )
        return (
            f"{self.node}: removed {len(self.names)} record(s) {sorted(self.names)}, {self.blobs} blob(s), "
            f"{self.layers} unpacked layer(s), {self.layer_bytes / 1e6:.1f} MB of layers{kept}{waited}"
        )


class StillPresent(RuntimeError):
    """An image meant to be gone from a node is not: a launch would not really pull it."""


# -- pure --------------------------------------------------------------------------------------


def parse_image_list(text: str) -> list[ImageRecord]:
    """`ctr images ls` (REF TYPE DIGEST SIZE PLATFORMS LABELS) -> records."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("sha256:"):
            out.append(ImageRecord(parts[0], parts[2]))
    return out


def parse_snapshots(text: str) -> list[Snapshot]:
    """`ctr snapshots ls` (KEY PARENT KIND; PARENT empty for a base layer) -> snapshots."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3:
            out.append(Snapshot(*parts))
        elif len(parts) == 2:
            out.append(Snapshot(parts[0], "", parts[1]))
    return out


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain IDs of a layer stack (image-spec config.md): the unpacked layers' names."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def plan_forget(
    records: Iterable[ImageRecord], repos: Sequence[str], parts: dict[str, ImageParts]
) -> ForgetPlan:
    """Which records go (every name of an image one of whose names contains one of `repos`), and
    which blobs and layers must be gone afterwards (those no staying image shares).
    `parts`: target digest -> what that image occupies, for every target in `records`."""
    records = list(records)
    targets = {r.target for r in records if any(repo in r.name for repo in repos)}
    gone = [r for r in records if r.target in targets]
    staying: dict[str, list[str]] = {}
    for r in records:
        if r.target not in targets:
            staying.setdefault(r.target, []).append(r.name)
    mine, theirs = ImageParts(), ImageParts()
    for t in targets:
        p = parts.get(t, ImageParts())
        mine.blobs |= p.blobs
        mine.chains |= p.chains
        mine.layer_sizes.update(p.layer_sizes)
    kept: dict[str, list[str]] = {}
    for t, names in staying.items():
        p = parts.get(t, ImageParts())
        theirs.blobs |= p.blobs
        theirs.chains |= p.chains
        for layer in p.layer_sizes:
            if layer in mine.layer_sizes:
                # the image's readable name, not its ID record
                kept.setdefault(layer, []).append(min(names, key=lambda n: (n.startswith("sha256:"), n)))
    blobs = mine.blobs - theirs.blobs
    return ForgetPlan(
        names=sorted(r.name for r in gone),
        blobs=blobs,
        chains=mine.chains - theirs.chains,
        layer_bytes=sum(size for d, size in mine.layer_sizes.items() if d in blobs),
        kept={d: sorted(set(ns)) for d, ns in kept.items()},
    )


# -- a node's containerd --------------------------------------------------------------------


@dataclass
class Containerd:
    """`ctr` against one node's containerd, in the CRI plugin's namespace (what kubelet sees)."""

    address: Path
    node: str = ""

    def ctr(self, *args: str) -> str:
        res = subprocess.run(
            ["ctr", "--address", str(self.address), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} on {self.node or self.address}: {res.stderr.strip()}")
        return res.stdout

    def records(self) -> list[ImageRecord]:
        return parse_image_list(self.ctr("images", "ls"))

    def content(self) -> set[str]:
        return set(self.ctr("content", "ls", "-q").split())

    def snapshots(self) -> list[Snapshot]:
        return parse_snapshots(self.ctr("snapshots", "ls"))

    def blob(self, digest: str) -> dict:
        return json.loads(self.ctr("content", "get", digest))

    def parts(self, target: str, present: set[str]) -> ImageParts:
        """Walk an index or manifest in the content store (only what is present)."""
        p = ImageParts()
        todo = [target]
        while todo:
            d = todo.pop()
            if d not in present or d in p.blobs:
                continue
            p.blobs.add(d)
            doc = self.blob(d)
            if "manifests" in doc or doc.get("mediaType") in INDEX_TYPES:
                todo.extend(m["digest"] for m in doc.get("manifests", []))
                continue
            config = doc.get("config", {}).get("digest")
            for layer in doc.get("layers", []):
                p.layer_sizes[layer["digest"]] = int(layer.get("size", 0))
                if layer["digest"] in present:
                    p.blobs.add(layer["digest"])
            if config and config in present:
                p.blobs.add(config)
                p.chains |= set(chain_ids(self.blob(config).get("rootfs", {}).get("diff_ids", [])))
        return p

    def collect_garbage(self) -> None:
        """A synchronous garbage collection (a lease made and deleted with --sync)."""
        lease = self.ctr("leases", "create").split()[0]
        self.ctr("leases", "rm", "--sync", lease)

    def holders(self, chains: set[str]) -> list[str]:
        """Containers (their rootfs snapshots) built on one of these layers."""
        return sorted(s.key for s in self.snapshots() if s.kind != "Committed" and s.parent in chains)

    def leftovers(self, plan: ForgetPlan) -> list[str]:
        targets_left = [r.name for r in self.records() if r.name in plan.names]
        blobs_left = sorted(plan.blobs & self.content())
        layers_left = sorted(plan.chains & {s.key for s in self.snapshots()})
        out = []
        if targets_left:
            out.append(f"image records {targets_left}")
        if blobs_left:
            out.append(f"blobs {blobs_left}")
        if layers_left:
            out.append(f"unpacked layers {layers_left}")
        return out


def forget(ctrd: Containerd, repos: Sequence[str], *, timeout: float = 150) -> Forgotten:
    """Remove every image one of whose names contains one of `repos` from the node, completely.

    Raises StillPresent naming what is left (a record, a blob or an unpacked layer of its own).
    """
    records = ctrd.records()
    present = ctrd.content()
    parts = {t: ctrd.parts(t, present) for t in {r.target for r in records}}
    plan = plan_forget(records, repos, parts)
    result = Forgotten(ctrd.node, names=plan.names, kept=plan.kept)
    if not plan.names:
        return result
    # kubelet removes a deleted pod's stopped containers in its own time (its container GC runs
    # once a minute): deleting them behind its back would leave the CRI plugin's records stale.
    t = time.monotonic()
    result.waited_for = ctrd.holders(plan.chains)
    if result.waited_for:
        wait_until(
            lambda: not ctrd.holders(plan.chains),
            timeout=timeout,
            interval=1,
            what=f"kubelet to remove the stopped containers {result.waited_for} on {ctrd.node}",
        )
    result.waited_seconds = time.monotonic() - t
    ctrd.ctr("images", "rm", "--sync", *plan.names)
    left = ctrd.leftovers(plan)
    if left:
        ctrd.collect_garbage()
        left = ctrd.leftovers(plan)
    if left:
        raise StillPresent(f"{ctrd.node}: still present after removing {plan.names}: {'; '.join(left)}")
    result.blobs, result.layers, result.layer_bytes = len(plan.blobs), len(plan.chains), plan.layer_bytes
    return result


def present(ctrd: Containerd, repos: Sequence[str]) -> list[str]:
    """Names of images (any record of them, ID records included) matching `repos` on the node."""
    records = ctrd.records()
    targets = {r.target for r in records if any(repo in r.name for repo in repos)}
    return sorted(r.name for r in records if r.target in targets)
