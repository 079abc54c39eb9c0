"""Scale (issues 8, 16): 1,000 CourseImages on one hub, this tree vs the previous main.

Each phase runs a fresh operator process, so its peak RSS (VmHWM) and CPU seconds
(utime+stime from /proc) belong to that phase alone:
  one hub:   all N applied at once -> time until all Published / all Ready, writes to the
             allowlist and the pullers, writes per course, RSS, CPU; then --steady-seconds with
             nothing changing: API writes, registry calls, Helm calls;
  base:      the same against the previous main, from a temporary git worktree (--base REV,
             default harness.BASE_DEFAULT; --no-base skips it);
  spread:    (with --spread) the same N over --hubs hubs in as many namespaces, this tree;
  naive:     (with --naive) the one-hub burst with debouncing off, this tree.
The shortest resolve interval is --resolve-interval (default 100 s) so that the steady window
holds a few re-resolve rounds; registry calls are also given per hour at the defaults.

    uv run python bench/bench_scale.py [--courses 1000] [--steady-seconds 300]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness import (
    CLK_TCK,
    Env,
    SourceTree,
    add_base_args,
    bench_course,
    deal_courses,
    fmt_s,
    idle,
    log,
    percentile,
    settle,
    slug,
    table,
)

REPO_NAME = "courses/scale"
DEFAULT_RESOLVE_INTERVAL = 300.0


def proc_cpu(pid: int) -> float:
    """utime+stime of a process, in seconds (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def control_plane_cpu(env: Env) -> dict[str, float]:
    """CPU seconds so far of each control-plane process (API server, etcd, controller-manager,
    kwok...) and of this benchmark (its POST threads and watch): whether a burst's time is
    theirs or the operator's, on a machine of os.cpu_count() cores."""
    out = {name: proc_cpu(proc.pid) for name, proc in env.cluster._procs.items()}
    t = os.times()
    out["bench"] = t.user + t.system
    return out


def phase(
    env: Env,
    name: str,
    namespaces: list[str],
    refs: list[str],
    args,
    op_env: dict,
    steady: bool,
    source: SourceTree | None = None,
    extra: list[str] = (),  # type: ignore[assignment]
) -> dict:
    for ns in namespaces:
        env.api.create_namespace(ns)
    op = env.operator(namespaces, name, op_env, source)
    # Imports and kopf, before any object: the floor under the figure at N courses.
    rss_start = op.peak_rss_mb("VmRSS")
    cpu_start = op.cpu_seconds()[0]
    # --no-prepull: the hub without pullers, to tell their cost (DaemonSets of N init containers
    # and their pods' rollouts) from the courses' own writes.
    env.install_hubs(namespaces, timeout=600, **({"prePull": {"enabled": False}} if args.no_prepull else {}))
    watch = env.watch(namespaces)
    before = settle(op)
    per_ns, keys = deal_courses(namespaces, refs, len(refs))
    cpu0 = op.cpu_seconds()[0]
    cp0 = {**control_plane_cpu(env), "operator": cpu0}
    log(f"{name}: applying {len(keys)} CourseImages over {len(namespaces)} namespace(s)")
    stamps = {}
    for ns, ms in per_ns.items():
        stamps.update({(ns, k): v for k, v in env.api.create_courses(ns, ms).items()})
    t0 = min(stamps.values())
    applied = time.monotonic() - t0
    log(f"{name}: all {len(keys)} applied after {applied:.1f} s")
    watch.wait_all(keys, "published", timeout=1800)
    log(f"{name}: all Published after {time.monotonic() - t0:.1f} s")
    watch.wait_all(keys, "ready", timeout=1800)
    cp1 = {**control_plane_cpu(env), "operator": op.cpu_seconds()[0]}
    res = {
        "applied": applied,
        "control_plane_cpu": {k: cp1[k] - cp0[k] for k in cp1},
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
    log(
        f"{name}: apply -> all Ready: CPU seconds "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["control_plane_cpu"].items())
    )
    if extra:
        # One more course at a time on the full hub (a course team's everyday change): apply ->
        # Ready, and what it cost the API server; distinct images, so none is pulled already.
        times, cp_a, m0 = [], control_plane_cpu(env)["kube-apiserver"], op.metrics()
        for j, ref in enumerate(extra):
            m = bench_course(len(refs) + j, ref)
            ns = namespaces[0]
            key = (ns, m["metadata"]["name"])
            t = env.api.create_courses(ns, [m])[key[1]]
            watch.wait_all([key], "ready", timeout=300)
            times.append(watch.ready[key] - t)
            settle(op, quiet_for=2, timeout=60)
        res["singles"] = times
        res["singles_apiserver_cpu"] = (control_plane_cpu(env)["kube-apiserver"] - cp_a) / len(extra)
        res["singles_writes"] = op.metrics() - m0
        log(
            f"{name}: {len(extra)} more courses, one at a time: apply -> Ready "
            + ", ".join(f"{x:.2f}" for x in times)
        )
    if steady and args.steady_seconds > 0:
        cpu1 = op.cpu_seconds()[0]
        res["steady"] = idle(op, args.steady_seconds, f"{name} steady")
        res["steady_cpu"] = op.cpu_seconds()[0] - cpu1
    res["rss"] = op.peak_rss_mb()
    res["rss_start"] = rss_start
    res["cpu_total"] = op.cpu_seconds()[0] - cpu_start
    res["helm_children_cpu"] = op.cpu_seconds()[1]
    watch.stop()
    op.stop()
    env.operators.remove(op)
    return res


def per_hour_at_defaults(r: dict, n: int) -> tuple[str, str]:
    """Registry calls per hour for n courses at the default intervals: (digests just moved,
    digests unchanged for a day). Trees before desired/recheck.py re-resolved every course
    every 300 s whatever its age; since, the interval grows from 300 s to 3,600 s over a day
    (computed with this tree's defaults)."""
    if r["adaptive"]:
        from coursehub.desired.recheck import DAY, recheck_interval
        from coursehub.settings import Settings

        d = Settings()
        fresh = recheck_interval(0, shortest=d.resolve_interval, longest=d.resolve_interval_max)
        old = recheck_interval(DAY, shortest=d.resolve_interval, longest=d.resolve_interval_max)
    else:
        fresh = old = DEFAULT_RESOLVE_INTERVAL
    return f"{n * 3600 / fresh:.0f}", f"{n * 3600 / old:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--courses", type=int, default=1000)
    ap.add_argument("--hubs", type=int, default=5, help="hubs (namespaces) in the --spread phase")
    ap.add_argument("--steady-seconds", type=float, default=300)
    ap.add_argument(
        "--resolve-interval",
        type=float,
        default=100,
        help="COURSEHUB_RESOLVE_INTERVAL for the run (registry calls are also given per hour at 300 s)",
    )
    ap.add_argument("--spread", action="store_true", help="also run N courses over --hubs hubs")
    ap.add_argument("--naive", action="store_true", help="also run the one-hub burst with debouncing off")
    add_base_args(ap)
    ap.add_argument(
        "--more", type=int, default=5, help="then this many more courses, one at a time, on the full hub"
    )
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--no-prepull", action="store_true", help="hubs with spec.prePull.enabled false (no pullers)"
    )
    args = ap.parse_args()
    op_env = {"COURSEHUB_RESOLVE_INTERVAL": str(args.resolve_interval)}
    naive_env = {**op_env, "COURSEHUB_DEBOUNCE_SECONDS": "0", "COURSEHUB_DEBOUNCE_MAX_SECONDS": "0"}

    runs: dict[str, dict] = {}
    with Env(keep=args.keep) as env:
        slugs = [slug(i) for i in range(args.courses)]
        log(f"pushing {len(slugs)} images")
        env.push_images(REPO_NAME, slugs)
        refs = [env.registry.ref(REPO_NAME, s) for s in slugs]
        more = [slug(args.courses + j) for j in range(args.more)]
        extra = list(env.push_images(REPO_NAME, more).values())
        runs["1 hub, this tree"] = phase(
            env, "one-hub", ["scale-one"], refs, args, op_env, steady=True, extra=extra
        )
        runs["1 hub, this tree"]["adaptive"] = True
        if not args.no_base:
            with SourceTree(args.base) as tree:
                r = phase(
                    env, "base", ["scale-base"], refs, args, op_env, steady=True, source=tree, extra=extra
                )
                # Trees since the adaptive re-check interval (desired/recheck.py) have it; older
                # ones re-resolved every course every 300 s.
                r["adaptive"] = (tree.dir / "operator/coursehub/desired/recheck.py").exists()
                runs[f"1 hub, previous main {tree.commit}"] = r
        if args.spread:
            namespaces = [f"scale-{i}" for i in range(args.hubs)]
            runs[f"{args.hubs} hubs, this tree"] = phase(
                env, "spread", namespaces, refs, args, op_env, steady=True
            )
            runs[f"{args.hubs} hubs, this tree"]["adaptive"] = True
        if args.naive:
            runs["1 hub, debounce off"] = phase(
                env, "naive", ["scale-naive"], refs, args, naive_env, steady=False
            )
            runs["1 hub, debounce off"]["adaptive"] = True

    cm, ds = "ConfigMap", "DaemonSet"
    n = args.courses
    mins = round(args.steady_seconds / 60, 1)
    rounds = args.steady_seconds / args.resolve_interval

    def col(r: dict) -> list:
        b, s = r["burst"], r.get("steady")
        reg = s.registry_calls() if s else None
        fresh, old = per_hour_at_defaults(r, r["n"])
        course_writes = b.writes(("CourseImage", "CourseImage/status")) / r["n"]
        events = b.writes("Event") / r["n"]
        cp = r["control_plane_cpu"]
        return [
            fmt_s(r["applied"]),
            fmt_s(r["all_published"]),
            fmt_s(r["all_ready"]),
            f"{fmt_s(r['published_p50'])} / {fmt_s(r['published_p95'])}",
            b.writes(cm),
            b.writes(ds),
            int(b.sum("coursehub_kube_requests_total", method="GET", kind=ds)),
            b.writes(),
            f"{b.writes() / r['n']:.2f} (CourseImage {course_writes:.2f}, Event {events:.2f})",
            b.helm_mutations(),
            f"{r['rss']:.0f} MB (at start {r['rss_start']:.0f} MB)",
            f"{r['burst_cpu']:.1f}",
            " / ".join(
                f"{v:.1f}"
                for v in (
                    cp.get("kube-apiserver", 0),
                    cp.get("etcd", 0),
                    sum(v for k, v in cp.items() if k not in ("kube-apiserver", "etcd", "bench", "operator")),
                    cp.get("bench", 0),
                    cp.get("operator", 0),
                )
            ),
            f"{r['cpu_total']:.1f} (+{r['helm_children_cpu']:.1f} helm)",
            s.writes() if s else "-",
            s.helm_calls() if s else "-",
            reg if s else "-",
            f"{reg / rounds / r['n']:.2f}" if s else "-",
            fresh,
            old,
            f"{r['steady_cpu']:.1f}" if s else "-",
            (
                f"{fmt_s(percentile(r['singles'], 50))} / {fmt_s(max(r['singles']))}"
                if r.get("singles")
                else "-"
            ),
            f"{r['singles_apiserver_cpu']:.2f} s" if r.get("singles") else "-",
            f"{r['singles_writes'].writes(ds) / len(r['singles']):.1f}" if r.get("singles") else "-",
        ]

    labels = [
        ("time until all applied (the bench's 8 POST threads)", ""),
        ("time until all Published", ""),
        ("time until all Ready", "<= 10 s"),
        ("apply->Published p50 / p95", ""),
        ("burst: allowlist ConfigMap writes", "a handful"),
        ("burst: puller DaemonSet writes", "a handful"),
        ("burst: DaemonSet reads (LIST or GET; the watch feeds the rounds)", ""),
        ("burst: all API writes", ""),
        ("burst: API writes per course", "<= 3"),
        ("burst: Helm install/upgrade", "0"),
        ("operator peak RSS (VmHWM)", "<= 150 MB"),
        ("operator CPU seconds, burst", ""),
        ("CPU s, apply -> all Ready: apiserver / etcd / rest of control plane / bench / operator", ""),
        ("operator CPU seconds, whole phase", ""),
        (f"steady {mins:g} min: API writes", "0"),
        (f"steady {mins:g} min: Helm calls of any kind", "0"),
        (f"steady {mins:g} min: registry calls (shortest interval {args.resolve_interval:g} s)", ""),
        ("  registry calls per course per shortest interval", ""),
        (f"registry calls per hour, {n} courses, defaults, digests just moved", ""),
        (f"registry calls per hour, {n} courses, defaults, digests a day old", ""),
        (f"steady {mins:g} min: operator CPU seconds", ""),
        (f"then {args.more} more courses one at a time: apply -> Ready p50 / max", ""),
        ("  kube-apiserver CPU per course", ""),
        ("  puller DaemonSet writes per course", ""),
    ]
    cols = [col(r) for r in runs.values()]
    rows = [(lab, *(c[i] for c in cols), tgt) for i, (lab, tgt) in enumerate(labels)]
    print(
        f"\nscale: {n} CourseImages; machine: {os.cpu_count()} cores; "
        f"resolve interval {args.resolve_interval:g} s; steady {args.steady_seconds:g} s"
    )
    print(table(rows, ("figure", *runs, "target")))
    for name, r in runs.items():
        print(f"{name}: burst writes {r['burst'].writes_by_kind()}")
        if r.get("steady"):
            print(f"{name}: steady writes {r['steady'].writes_by_kind()}")


if __name__ == "__main__":
    main()
