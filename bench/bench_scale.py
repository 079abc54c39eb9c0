"""Scale (issue 8): 1,000 CourseImages on one hub, then the same 1,000 over 5 hubs in 5 namespaces.

Each phase runs a fresh operator process, so its peak RSS (VmHWM) and CPU seconds
(utime+stime from /proc) belong to that phase alone:
  one hub:   all N applied at once -> time until all Published / all Ready, writes to the
             allowlist and the pullers, RSS, CPU; then --steady-seconds with nothing
             changing: API writes, registry calls, Helm calls;
  five hubs: the same N spread over 5 namespaces, one hub each, one operator watching all 5;
             the same figures;
  naive:     (unless --no-baseline) the one-hub burst again with debouncing off, for writes per
             course change with and without debouncing, measured in the same run.
The resolve interval is --resolve-interval (default 120 s) so that the steady window holds
several re-resolve rounds; registry calls are also extrapolated per hour at the default 300 s.

    uv run python bench/bench_scale.py [--courses 1000] [--hubs 5] [--steady-seconds 600]
"""

from __future__ import annotations

import argparse
import os
import time

from harness import (
    GROUP_PATH,
    Env,
    cond_true_now,
    course_manifest,
    fmt_s,
    hub_manifest,
    idle,
    log,
    percentile,
    settle,
    slug,
    table,
    wait_until,
)

REPO_NAME = "courses/scale"
DEFAULT_RESOLVE_INTERVAL = 300.0


def phase(
    env: Env, name: str, namespaces: list[str], refs: list[str], args, op_env: dict, steady: bool
) -> dict:
    for ns in namespaces:
        env.api.create_namespace(ns)
    op = env.operator(namespaces, name, op_env)
    cpu_start = op.cpu_seconds()[0]
    for ns in namespaces:
        # Installs run concurrently in the operator; create all hubs before waiting on any.
        env.api.create(
            f"{GROUP_PATH}/namespaces/{ns}/jupyterhubdeployments",
            hub_manifest("learn", domain=f"{ns}.example.edu"),
        )
    for ns in namespaces:
        wait_until(
            lambda ns=ns: cond_true_now(env.api.hub(ns, "learn"), "ReleaseDeployed"),
            timeout=600,
            what=f"hub {ns} ReleaseDeployed",
            interval=0.2,
        )
    watch = env.watch(namespaces)
    before = settle(op)
    # Courses dealt round-robin over the namespaces; every 5th needs a GPU.
    per_ns: dict[str, list[dict]] = {ns: [] for ns in namespaces}
    for i, ref in enumerate(refs):
        ns = namespaces[i % len(namespaces)]
        per_ns[ns].append(
            course_manifest(f"c{i:04d}", slug(i), ref, gpu="required" if i % 5 == 4 else "none")
        )
    keys = [(ns, m["metadata"]["name"]) for ns, ms in per_ns.items() for m in ms]
    cpu0 = op.cpu_seconds()[0]
    log(f"{name}: applying {len(keys)} CourseImages over {len(namespaces)} namespace(s)")
    stamps = {}
    for ns, ms in per_ns.items():
        stamps.update({(ns, k): v for k, v in env.api.create_courses(ns, ms).items()})
    t0 = min(stamps.values())
    watch.wait_all(keys, "published", timeout=1800)
    log(f"{name}: all Published after {time.monotonic() - t0:.1f} s")
    watch.wait_all(keys, "ready", timeout=1800)
    res = {
        "n": len(keys),
        "hubs": len(namespaces),
        "all_published": max(watch.published[k] for k in keys) - t0,
        "all_ready": max(watch.ready[k] for k in keys) - t0,
        "published_p50": percentile([watch.published[k] - stamps[k] for k in keys], 50),
        "published_p95": percentile([watch.published[k] - stamps[k] for k in keys], 95),
    }
    after = settle(op, quiet_for=5, timeout=60)
    res["burst"] = after - before
    res["burst_cpu"] = op.cpu_seconds()[0] - cpu0
    log(f"{name}: all Ready after {res['all_ready']:.1f} s; burst writes {res['burst'].writes_by_kind()}")
    if steady and args.steady_seconds > 0:
        cpu1 = op.cpu_seconds()[0]
        res["steady"] = idle(op, args.steady_seconds, f"{name} steady")
        res["steady_cpu"] = op.cpu_seconds()[0] - cpu1
    res["rss"] = op.peak_rss_mb()
    res["cpu_total"] = op.cpu_seconds()[0] - cpu_start
    res["helm_children_cpu"] = op.cpu_seconds()[1]
    watch.stop()
    op.stop()
    env.operators.remove(op)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--courses", type=int, default=1000)
    ap.add_argument("--hubs", type=int, default=5, help="hubs (namespaces) in the spread phase")
    ap.add_argument("--steady-seconds", type=float, default=600)
    ap.add_argument(
        "--resolve-interval",
        type=float,
        default=120,
        help="COURSEHUB_RESOLVE_INTERVAL for the run (registry calls are also given per hour at 300 s)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the naive (debounce off) burst")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    op_env = {"COURSEHUB_RESOLVE_INTERVAL": str(args.resolve_interval)}
    naive_env = {**op_env, "COURSEHUB_DEBOUNCE_SECONDS": "0", "COURSEHUB_DEBOUNCE_MAX_SECONDS": "0"}

    with Env(keep=args.keep) as env:
        slugs = [slug(i) for i in range(args.courses)]
        log(f"pushing {len(slugs)} images")
        env.push_images(REPO_NAME, slugs)
        refs = [env.registry.ref(REPO_NAME, s) for s in slugs]
        one = phase(env, "one-hub", ["scale-one"], refs, args, op_env, steady=True)
        spread = phase(
            env, "spread", [f"scale-{i}" for i in range(args.hubs)], refs, args, op_env, steady=True
        )
        naive = (
            None
            if args.no_baseline
            else phase(env, "naive", ["scale-naive"], refs, args, naive_env, steady=False)
        )

    cm, ds = "ConfigMap", "DaemonSet"
    n = args.courses
    mins = round(args.steady_seconds / 60, 1)
    rounds = args.steady_seconds / args.resolve_interval

    def col(r: dict | None) -> list:
        if r is None:
            return ["-"] * 19
        b, s = r["burst"], r.get("steady")
        reg = s.registry_calls() if s else None
        per_hour = (reg / rounds * (3600 / DEFAULT_RESOLVE_INTERVAL)) if s else None
        return [
            fmt_s(r["all_published"]),
            fmt_s(r["all_ready"]),
            f"{fmt_s(r['published_p50'])} / {fmt_s(r['published_p95'])}",
            b.writes(cm),
            b.writes(ds),
            f"{b.writes(cm) / r['n']:.3f} / {b.writes(ds) / r['n']:.3f}",
            b.writes(),
            b.helm_mutations(),
            f"{r['rss']:.0f} MB",
            f"{r['burst_cpu']:.1f}",
            f"{r['cpu_total']:.1f} (+{r['helm_children_cpu']:.1f} helm)",
            s.writes() if s else "-",
            s.helm_mutations() if s else "-",
            s.helm_calls() if s else "-",
            reg if s else "-",
            f"{reg / rounds / r['n']:.2f}" if s else "-",
            f"{per_hour:.0f}" if s else "-",
            f"{r['steady_cpu']:.1f}" if s else "-",
            s.reads() if s else "-",
        ]

    labels = [
        ("time until all Published", ""),
        ("time until all Ready", ""),
        ("apply->Published p50 / p95", ""),
        ("burst: allowlist ConfigMap writes", "a handful"),
        ("burst: puller DaemonSet writes", "a handful"),
        ("  per course change (allowlist / puller)", ""),
        ("burst: all API writes", ""),
        ("burst: Helm install/upgrade", "0"),
        ("operator peak RSS (VmHWM)", "<= 250 MB"),
        ("operator CPU seconds, burst", ""),
        ("operator CPU seconds, whole phase", ""),
        (f"steady {mins:g} min: API writes", "0"),
        (f"steady {mins:g} min: Helm install/upgrade", "0"),
        (f"steady {mins:g} min: Helm calls of any kind", "0"),
        (f"steady {mins:g} min: registry calls (interval {args.resolve_interval:g} s)", ""),
        ("  registry calls per course per round", "1"),
        ("  registry calls per hour at the default 300 s", f"{12 * n}"),
        (f"steady {mins:g} min: operator CPU seconds", ""),
        (f"steady {mins:g} min: API reads (GET)", ""),
    ]
    cols = [col(one), col(spread), col(naive)]
    rows = [(lab, *(c[i] for c in cols), tgt) for i, (lab, tgt) in enumerate(labels)]
    print(
        f"\nscale: {n} CourseImages; machine: {os.cpu_count()} cores; "
        f"resolve interval {args.resolve_interval:g} s; steady {args.steady_seconds:g} s"
    )
    print(
        table(
            rows,
            (
                "figure",
                "1 hub",
                f"{args.hubs} hubs / {args.hubs} namespaces",
                "1 hub, naive (debounce off)",
                "target",
            ),
        )
    )
    for name, r in (("1 hub", one), (f"{args.hubs} hubs", spread), ("naive", naive)):
        if r:
            print(f"{name}: burst writes {r['burst'].writes_by_kind()}")
            if r.get("steady"):
                print(f"{name}: steady writes {r['steady'].writes_by_kind()}")


if __name__ == "__main__":
    main()
