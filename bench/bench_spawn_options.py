"""Spawn-request option handling + allowlist lookup with 1,000 courses.

Measures, per spawn request, the hub module's whole decision path: normalize the
request, get the allowlist through the TTL cache (re-reading and re-parsing the
ConfigMap text when the cache expires), plan the launch and merge it onto the hub's
defaults. Prints p50/p99 microseconds and API reads per spawn at several spawn
rates. The cache runs on a virtual clock advanced by the inter-arrival time, so the
read count reflects the rate, not how fast this machine is.

Source of the allowlist:
- default: the ConfigMap's JSON text handed over in-process (measures our code only),
  once with a new resourceVersion on every read (worst case: every miss re-parses)
  and once unchanged (the common case: a miss costs only the read);
- ``--kubeconfig PATH --namespace NS`` or ``--devcluster``: a real API server; the
  bench writes the ConfigMap there; "api-server" rows make every cache miss a real GET
  through kubernetes_asyncio (the hub's fallback path), the "api+watch" row is the
  hub's default (a watch keeps the list in memory; requests run back to back).

Usage: uv run python bench/bench_spawn_options.py [--requests 20000] [--devcluster | --kubeconfig PATH]
No assertions: numbers only.
"""

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time

from coursehub.hub import course_spawner as cs

BASELINE = {
    "image": "quay.io/jupyterhub/k8s-singleuser-sample:4.4.0",
    "default_url": "",
    "mem_limit": 4 * 1024**3,
    "mem_guarantee": 2 * 1024**3,
    "cpu_limit": None,
    "cpu_guarantee": 0.25,
    "node_affinity_required": [],
    "tolerations": [],
    "extra_resource_limits": {},
    "extra_resource_guarantees": {},
}


def allowlist_text(n: int) -> str:
    courses = {}
    for i in range(n):
        slug = f"course_{i:04d}-sec.{i % 7}"
        courses[slug] = {
            "course": slug,
            "image": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ol-course-notebooks@sha256:{i:064x}",
            "displayName": f"Course {i}",
            "gpu": ("none", "required", "optional")[i % 3],
            "defaultNotebook": "intro.ipynb" if i % 2 else None,
            "resources": {
                "memory": {"limit": "8G" if i % 5 == 0 else None, "guarantee": None},
                "cpu": {"limit": None, "guarantee": None},
            },
        }
    doc = {
        "version": 1,
        "hub": "bench",
        "default": "course_0000-sec.0",
        "onUnknown": "default",
        "gpu": {
            "nodeSelector": {"ol.mit.edu/gpu_node": "true"},
            "tolerations": [
                {"key": "ol.mit.edu/gpu_node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            ],
            "resource": "nvidia.com/gpu",
        },
        "courses": courses,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def requests_mix(n_courses: int, count: int, seed: int = 1) -> list:
    """Query dicts as /hub/spawn receives them: mostly valid links, some noise."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        i = rnd.randrange(n_courses)
        slug = f"course_{i:04d}-sec.{i % 7}"
        r = rnd.random()
        q = {"course": [slug.upper() if r < 0.2 else slug]}
        if r > 0.9:
            q = {"course": [f"unknown-{i}"]}
        if rnd.random() < 0.6:
            q["notebook"] = [
                rnd.choice(["week%201/lab.ipynb", "intro.ipynb", "../../etc/passwd", "a/b/c.ipynb"])
            ]
        if rnd.random() < 0.3:
            q["gpu"] = ["true"]
        if rnd.random() < 0.1:
            q["tag"] = ["latest"]
            q["image"] = ["evil/image"]
        out.append(q)
    return out


class VirtualClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def run(rate: float, reqs: list, fetch, label: str) -> None:
    clock = VirtualClock()
    cache = cs.AllowlistCache(ttl=cs.ALLOWLIST_TTL_SECONDS, clock=clock)
    times = []
    refused = 0
    for q in reqs:
        t0 = time.perf_counter_ns()
        opts = cs.normalize_options(q)
        al = await cache.get("bench", fetch)
        try:
            cs.merge_traits(BASELINE, cs.plan_launch(al, opts))
        except cs.CourseRefused:
            refused += 1
        times.append((time.perf_counter_ns() - t0) / 1000)
        clock.t += 1.0 / rate
    print(
        f"{label:<14} {rate:>8.0f}/s {len(reqs):>8} {statistics.median(times):>9.1f} {pct(times, 99):>9.1f} "
        f"{max(times):>10.1f} {cache.reads:>7} {cache.reads / len(reqs):>10.4f}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--courses", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--kubeconfig")
    ap.add_argument("--namespace", default="coursehub-bench")
    ap.add_argument(
        "--devcluster",
        action="store_true",
        help="start the local control plane (coursehub_dev) and read through it",
    )
    args = ap.parse_args()
    cluster = None
    if args.devcluster and not args.kubeconfig:
        import tempfile
        from pathlib import Path

        from coursehub_dev.cluster import DevCluster

        cluster = DevCluster(
            state_dir=Path(tempfile.mkdtemp(prefix="bench-devcluster-")) / "state", log=lambda *a: None
        )
        cluster.up()
        args.kubeconfig = str(cluster.kubeconfig)
    try:
        await measure(args)
    finally:
        if cluster is not None:
            cluster.down(quiet=True)


async def measure(args) -> None:

    text = allowlist_text(args.courses)
    reqs = requests_mix(args.courses, args.requests)
    print(
        f"allowlist: {args.courses} courses, {len(text) / 1024:.0f} KiB JSON; TTL {cs.ALLOWLIST_TTL_SECONDS}s"
    )

    parse = []
    for _ in range(50):
        t0 = time.perf_counter_ns()
        cs.parse_allowlist(text)
        parse.append((time.perf_counter_ns() - t0) / 1000)
    print(
        f"full parse of the allowlist (cache miss): p50 {statistics.median(parse):.0f} us, "
        f"p99 {pct(parse, 99):.0f} us"
    )

    # The limit check a launch adds: count every other server of the hub (here 1,000,
    # 10 of them this identity's) and decide, as CourseSpawner.admit does.
    limits = cs.Limits(
        active_servers=5000, servers_per_identity=20, gpu_servers_per_identity=20, gateway_identity=True
    )
    running = [cs.Slot(f"p{i % 100}@example.edu", i % 7 == 0, f"user-{i}", "course") for i in range(1000)]
    admit = []
    for _ in range(200):
        t0 = time.perf_counter_ns()
        cs.check_limits(limits, running, identity="p1@example.edu", gpu=True)
        admit.append((time.perf_counter_ns() - t0) / 1000)
    print(
        f"limit check with 1,000 running servers: p50 {statistics.median(admit):.0f} us, "
        f"p99 {pct(admit, 99):.0f} us"
    )

    version = [0]

    async def in_process():
        # a new resourceVersion each read, so every miss re-parses (worst case)
        version[0] += 1
        return text, str(version[0])

    async def in_process_unchanged():
        # the common case: the list did not change since the last read
        return text, "1"

    sources = [("changing", in_process), ("unchanged", in_process_unchanged)]
    source = None
    if args.kubeconfig:
        source = await api_source(args.kubeconfig, args.namespace, text)
        source.watch = False
        sources.append(("api-server", source._fetch))

    print(
        f"{'source':<14} {'spawn rate':>10} {'requests':>8} {'p50 us':>9} {'p99 us':>9} {'max us':>10} "
        f"{'reads':>7} {'reads/spawn':>10}"
    )
    for label, fetch in sources:
        for rate in (1, 10, 100, 1000):
            await run(rate, reqs, fetch, label)
    if source is not None:
        # the hub's default: a watch keeps the list current; spawns read memory
        await run_watched(source, reqs)
        await source.api.api_client.close()


async def api_source(kubeconfig: str, namespace: str, text: str):
    """Write the ConfigMap to a real API server and return a fetch that reads it."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.rest import ApiException

    await config.load_kube_config(config_file=kubeconfig)
    api = client.CoreV1Api()
    try:
        await api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    except ApiException as e:
        if e.status != 409:
            raise
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="coursehub-allowlist"), data={"allowlist.json": text}
    )
    try:
        await api.create_namespaced_config_map(namespace, body)
    except ApiException as e:
        if e.status != 409:
            raise
        await api.replace_namespaced_config_map("coursehub-allowlist", namespace, body)
    source = cs.AllowlistSource(namespace=namespace, cache=cs.AllowlistCache())
    source.api = api
    return source


async def run_watched(source, reqs: list) -> None:
    """Spawn requests as fast as they come, the list kept current by the watch."""
    source.watch = True
    source.watcher.ensure_started()
    for _ in range(200):
        if source.watcher.live:
            break
        await asyncio.sleep(0.05)
    reads_before = source.cache.reads
    times = []
    t_start = time.monotonic()
    for q in reqs:
        t0 = time.perf_counter_ns()
        opts = cs.normalize_options(q)
        al = await source.current()
        with contextlib.suppress(cs.CourseRefused):
            cs.merge_traits(BASELINE, cs.plan_launch(al, opts))
        times.append((time.perf_counter_ns() - t0) / 1000)
    elapsed = time.monotonic() - t_start
    reads = source.cache.reads - reads_before
    print(
        f"{'api+watch':<14} {len(reqs) / elapsed:>8.0f}/s {len(reqs):>8} {statistics.median(times):>9.1f} "
        f"{pct(times, 99):>9.1f} {max(times):>10.1f} {reads:>7} {reads / len(reqs):>10.4f}"
    )
    source.watcher.task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
