"""Course publishing (issues 3, 16): apply -> Published latency, writes per burst; this tree vs main.

Operators run one after the other in the same run, each on its own namespace and hub: the
working tree with its defaults ("new"), the previous main from a temporary git worktree
("base", --base REV, default harness.BASE_DEFAULT; --no-base skips it), and with --naive the
working tree with debouncing off (COURSEHUB_DEBOUNCE_SECONDS=0, ..._MAX_SECONDS=0). Each gets
N single applies (one at a time, waiting for Published=True), then a burst of M CourseImages
applied at once; the new one then sits idle for --idle-seconds. Latencies are stamped from a
watch in this process; write counts come from the operator's own metrics
(coursehub_kube_requests_total, coursehub_helm_operations_total). Nothing is asserted.

    uv run python bench/bench_course_publish.py [--singles 20] [--burst 200] [--idle-seconds 300]
"""

from __future__ import annotations

import argparse

from harness import (
    Env,
    SourceTree,
    add_base_args,
    bench_course,
    fmt_s,
    idle,
    log,
    percentile,
    settle,
    slug,
    table,
)

NAIVE_ENV = {"COURSEHUB_DEBOUNCE_SECONDS": "0", "COURSEHUB_DEBOUNCE_MAX_SECONDS": "0"}
REPO_NAME = "courses/publish"


def run_mode(
    env: Env, mode: str, op_env: dict, slugs: list[str], args, source: SourceTree | None = None
) -> dict:
    ns = f"bench-{mode}"
    env.api.create_namespace(ns)
    op = env.operator([ns], mode, op_env, source)
    env.install_hub(ns, "learn", courses={"default": slug(0)})
    watch = env.watch([ns])
    res: dict = {}

    def manifest(i: int) -> dict:
        return bench_course(i, env.registry.ref(REPO_NAME, slugs[i]))

    # Single applies, one at a time: each waits for its own Published=True.
    singles = []
    for i in range(args.singles):
        stamps = env.api.create_courses(ns, [manifest(i)], workers=1)
        key = (ns, f"c{i:04d}")
        watch.wait_all([key], "published", timeout=120)
        singles.append(watch.published[key] - stamps[key[1]])
    watch.wait_all([(ns, f"c{i:04d}") for i in range(args.singles)], "ready", timeout=300)
    res["single"] = singles
    log(f"{mode}: singles p50 {fmt_s(percentile(singles, 50))}")
    before = settle(op)
    helm_before = before.helm_mutations()

    # The burst: M CourseImages applied at once (parallel POSTs, as `kubectl apply -f courses/` does).
    burst_idx = range(args.singles, args.singles + args.burst)
    keys = [(ns, f"c{i:04d}") for i in burst_idx]
    cpu0 = op.cpu_seconds()[0]
    stamps = env.api.create_courses(ns, [manifest(i) for i in burst_idx])
    t0 = min(stamps.values())
    watch.wait_all(keys, "published", timeout=600)
    watch.wait_all(keys, "ready", timeout=600)
    res["burst_published"] = [watch.published[k] - stamps[k[1]] for k in keys]
    res["burst_all_published"] = max(watch.published[k] for k in keys) - t0
    res["burst_all_ready"] = max(watch.ready[k] for k in keys) - t0
    after = settle(op)
    res["burst_cpu"] = op.cpu_seconds()[0] - cpu0
    res["burst"] = after - before
    res["helm_after_install"] = after.helm_mutations() - helm_before
    log(f"{mode}: burst all Ready in {fmt_s(res['burst_all_ready'])}, writes {res['burst'].writes_by_kind()}")

    if mode == "new" and args.idle_seconds > 0:
        res["idle"] = idle(op, args.idle_seconds, f"{mode} idle")
    res["rss"] = op.peak_rss_mb()
    watch.stop()
    op.stop()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--singles", type=int, default=20, help="single applies, one at a time")
    ap.add_argument("--burst", type=int, default=200, help="CourseImages applied at once")
    ap.add_argument("--idle-seconds", type=float, default=300, help="idle window after the burst (new run)")
    ap.add_argument("--naive", action="store_true", help="also run this tree with debouncing off")
    add_base_args(ap)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (operator logs)")
    args = ap.parse_args()

    runs: dict[str, dict] = {}
    with Env(keep=args.keep) as env:
        slugs = [slug(i) for i in range(args.singles + args.burst)]
        env.push_images(REPO_NAME, slugs)
        runs["this tree"] = run_mode(env, "new", {}, slugs, args)
        if not args.no_base:
            with SourceTree(args.base) as tree:
                runs[f"previous main {tree.commit}"] = run_mode(env, "base", {}, slugs, args, tree)
        if args.naive:
            runs["this tree, debounce off"] = run_mode(env, "naive", NAIVE_ENV, slugs, args)

    cm, ds = "ConfigMap", "DaemonSet"
    b = args.burst
    rs = list(runs.values())

    def row(label: str, f, target: str = "") -> tuple:
        return (label, *(f(r) for r in rs), target)

    def per_course(r: dict) -> str:
        w = r["burst"]
        course, event = w.writes(("CourseImage", "CourseImage/status")) / b, w.writes("Event") / b
        return f"{w.writes() / b:.2f} (CourseImage {course:.2f}, Event {event:.2f})"

    rows = [
        row("single apply->Published p50", lambda r: fmt_s(percentile(r["single"], 50)), "<= 0.15 s"),
        row("single apply->Published p95", lambda r: fmt_s(percentile(r["single"], 95))),
        row(f"burst {b}: apply->Published p50", lambda r: fmt_s(percentile(r["burst_published"], 50))),
        row(f"burst {b}: apply->Published p95", lambda r: fmt_s(percentile(r["burst_published"], 95))),
        row(f"burst {b}: all Published", lambda r: fmt_s(r["burst_all_published"])),
        row(f"burst {b}: all Ready", lambda r: fmt_s(r["burst_all_ready"]), "<= 3 s"),
        row(f"burst {b}: allowlist ConfigMap writes", lambda r: r["burst"].writes(cm), "a handful"),
        row(f"burst {b}: puller DaemonSet writes", lambda r: r["burst"].writes(ds), "a handful"),
        row(f"burst {b}: all API writes", lambda r: r["burst"].writes()),
        row(f"burst {b}: API writes per course", per_course, "<= 3"),
        row(f"burst {b}: operator CPU seconds", lambda r: f"{r['burst_cpu']:.1f}"),
        row("Helm install/upgrade after the hub install", lambda r: r["helm_after_install"], "0"),
    ]
    new = rs[0]
    if "idle" in new:
        i = new["idle"]
        mins = round(args.idle_seconds / 60, 1)
        dash = ["-"] * (len(rs) - 1)
        rows += [
            (f"idle {mins:g} min: all API writes", i.writes(), *dash, "0"),
            (f"idle {mins:g} min: Helm calls of any kind", i.helm_calls(), *dash, "0"),
            (f"idle {mins:g} min: registry calls", i.registry_calls(), *dash, ""),
        ]
    rows.append(row("operator peak RSS", lambda r: f"{r['rss']:.0f} MB"))
    print(f"\ncourse publishing: {args.singles} single applies, a burst of {b}, idle {args.idle_seconds:g} s")
    print(table(rows, ("figure", *runs, "target")))
    for name, r in runs.items():
        print(f"burst writes by kind, {name}: {r['burst'].writes_by_kind()}")
    if "idle" in new:
        print(f"idle writes by kind: {new['idle'].writes_by_kind()}; GETs {new['idle'].reads()}")


if __name__ == "__main__":
    main()
