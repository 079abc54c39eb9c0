"""Shards (issue 16): N courses over H hubs in H namespaces, served by 1, 2 and 4 shards.

For each shard count, on a fresh local control plane: H namespaces, each with a hub (all
releases deployed first), dealt round-robin to the shards; one operator process per shard
(leader election on, COURSEHUB_SHARD set, its namespaces claimed); then all N CourseImages
are created at once (round-robin over the namespaces, every 5th needing a GPU) and a watch
stamps when each is Ready. Reported: time to all Ready, the API server's CPU seconds over
that window (utime+stime of the kube-apiserver process, /proc), each shard's peak RSS
(VmHWM), API writes (without the Leases) and Lease requests per second at rest.

    uv run python bench/bench_shards.py [--courses 10000] [--hubs 50] [--shards 1,2,4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness import (
    CLK_TCK,
    Env,
    deal_courses,
    fmt_s,
    log,
    settle,
    slug,
    table,
)

REPO_NAME = "courses/shards"
LEASE_NS = "coursehub-ops"


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run(shards: int, args) -> dict:
    namespaces = [f"shard-ns-{i:02d}" for i in range(args.hubs)]
    groups = {f"s{k}": namespaces[k::shards] for k in range(shards)}
    with Env(keep=args.keep) as env:
        apiserver = env.cluster._procs["kube-apiserver"].pid
        slugs = [slug(i) for i in range(min(args.images, args.courses))]
        log(f"{shards} shard(s): pushing {len(slugs)} images")
        env.push_images(REPO_NAME, slugs)
        refs = [env.registry.ref(REPO_NAME, s) for s in slugs]
        env.api.create_namespace(LEASE_NS)
        for ns in namespaces:
            env.api.create_namespace(ns)
        ops = {
            name: env.operator(
                group,
                f"shard-{shards}-{name}",
                {
                    "COURSEHUB_LEADER_ELECTION": "true",
                    "COURSEHUB_LEASE_NAMESPACE": LEASE_NS,
                    "COURSEHUB_LEASE_NAME": f"coursehub-{name}",
                    "COURSEHUB_SHARD": name,
                    "COURSEHUB_IDENTITY": f"{name}-0",
                },
            )
            for name, group in groups.items()
        }
        env.install_hubs(namespaces, timeout=1800, interval=0.5)
        before = {name: settle(op) for name, op in ops.items()}
        watch = env.watch(namespaces)
        per_ns, keys = deal_courses(namespaces, refs, args.courses, digits=5)
        log(f"{shards} shard(s): applying {len(keys)} CourseImages over {len(namespaces)} namespaces")
        cpu0 = proc_cpu(apiserver)
        t0 = time.monotonic()
        for ns, ms in per_ns.items():
            env.api.create_courses(ns, ms)
        watch.wait_all(keys, "ready", timeout=7200)
        all_ready = max(watch.ready[k] for k in keys) - t0
        api_cpu = proc_cpu(apiserver) - cpu0
        log(f"{shards} shard(s): all Ready after {all_ready:.1f} s, API server CPU {api_cpu:.1f} s")
        after = {name: settle(op, quiet_for=5, timeout=300) for name, op in ops.items()}
        rest0 = {name: op.metrics() for name, op in ops.items()}
        time.sleep(args.rest_seconds)
        rest1 = {name: op.metrics() for name, op in ops.items()}
        lease_rate = sum(
            (rest1[n] - rest0[n]).sum("coursehub_kube_requests_total", kind="Lease") for n in ops
        ) / max(args.rest_seconds, 1e-9)
        writes = sum((after[n] - before[n]).writes() - (after[n] - before[n]).writes("Lease") for n in ops)
        rss = {name: op.peak_rss_mb() for name, op in ops.items()}
        watch.stop()
    return {
        "shards": shards,
        "all_ready": all_ready,
        "api_cpu": api_cpu,
        "rss": rss,
        "writes": writes,
        "lease_rate": lease_rate,
        "n": len(keys),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--courses", type=int, default=10000)
    ap.add_argument("--hubs", type=int, default=50, help="hubs, one per namespace")
    ap.add_argument("--shards", default="1,2,4", help="comma-separated shard counts, one run each")
    ap.add_argument("--images", type=int, default=500, help="distinct images the courses share")
    ap.add_argument("--rest-seconds", type=float, default=30, help="window for Lease requests at rest")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    results = [run(int(s), args) for s in args.shards.split(",")]
    print(
        f"\n{args.courses} CourseImages over {args.hubs} hubs in {args.hubs} namespaces "
        f"({args.images} distinct images); one operator process per shard\n"
    )
    rows = [
        (
            r["shards"],
            fmt_s(r["all_ready"]),
            f"{r['api_cpu']:.1f} s",
            ", ".join(f"{v:.0f}" for v in r["rss"].values()) + " MB",
            f"{r['writes']} ({r['writes'] / r['n']:.2f}/course)",
            f"{r['lease_rate']:.1f}/s",
        )
        for r in results
    ]
    print(
        table(
            rows,
            (
                "shards",
                "all Ready",
                "API server CPU (burst)",
                "peak RSS per shard",
                "API writes (no Leases)",
                "Lease requests at rest",
            ),
        )
    )


if __name__ == "__main__":
    main()
