"""Course publishing (issue 3): apply -> Published latency, and writes per burst, debounced vs naive.

Two operators run one after the other in the same run, each on its own namespace and hub:
coursehub as shipped (its default debounce window), and the naive baseline with debouncing
off (COURSEHUB_DEBOUNCE_SECONDS=0, COURSEHUB_DEBOUNCE_MAX_SECONDS=0), which writes on every
course change. Each gets N single applies (one at a time, waiting for Published=True), then a
burst of M CourseImages applied at once; the debounced one then sits idle for
--idle-seconds. Latencies are stamped from a watch in this process; write counts come from
the operator's own metrics (coursehub_kube_requests_total, coursehub_helm_operations_total).

    uv run python bench/bench_course_publish.py [--singles 20] [--burst 200] [--idle-seconds 300]
"""

from __future__ import annotations

import argparse

from harness import Env, course_manifest, fmt_s, idle, log, percentile, settle, slug, table

NAIVE_ENV = {"COURSEHUB_DEBOUNCE_SECONDS": "0", "COURSEHUB_DEBOUNCE_MAX_SECONDS": "0"}
REPO_NAME = "courses/publish"


def run_mode(env: Env, mode: str, op_env: dict, slugs: list[str], args) -> dict:
    ns = f"bench-{mode}"
    env.api.create_namespace(ns)
    op = env.operator([ns], mode, op_env)
    env.install_hub(ns, "learn", courses={"default": slug(0)})
    watch = env.watch([ns])
    res: dict = {}

    def manifest(i: int) -> dict:
        # Every 5th course needs a GPU, so both pullers (general and GPU) take part.
        return course_manifest(
            f"c{i:04d}",
            slugs[i],
            env.registry.ref(REPO_NAME, slugs[i]),
            gpu="required" if i % 5 == 4 else "none",
        )

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

    if mode == "debounced" and args.idle_seconds > 0:
        res["idle"] = idle(op, args.idle_seconds, f"{mode} idle")
    res["rss"] = op.peak_rss_mb()
    watch.stop()
    op.stop()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--singles", type=int, default=20, help="single applies, one at a time")
    ap.add_argument("--burst", type=int, default=200, help="CourseImages applied at once")
    ap.add_argument(
        "--idle-seconds", type=float, default=300, help="idle window after the burst (debounced run)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (operator logs)")
    args = ap.parse_args()

    with Env(keep=args.keep) as env:
        slugs = [slug(i) for i in range(args.singles + args.burst)]
        env.push_images(REPO_NAME, slugs)
        d = run_mode(env, "debounced", {}, slugs, args)
        n = run_mode(env, "naive", NAIVE_ENV, slugs, args)

    cm, ds = "ConfigMap", "DaemonSet"
    b = args.burst
    rows = [
        (
            "single apply->Published p50",
            fmt_s(percentile(d["single"], 50)),
            fmt_s(percentile(n["single"], 50)),
            "<= 2 s",
        ),
        (
            "single apply->Published p95",
            fmt_s(percentile(d["single"], 95)),
            fmt_s(percentile(n["single"], 95)),
            "",
        ),
        (
            f"burst {b}: apply->Published p50",
            fmt_s(percentile(d["burst_published"], 50)),
            fmt_s(percentile(n["burst_published"], 50)),
            "",
        ),
        (
            f"burst {b}: apply->Published p95",
            fmt_s(percentile(d["burst_published"], 95)),
            fmt_s(percentile(n["burst_published"], 95)),
            "",
        ),
        (f"burst {b}: all Published", fmt_s(d["burst_all_published"]), fmt_s(n["burst_all_published"]), ""),
        (f"burst {b}: all Ready", fmt_s(d["burst_all_ready"]), fmt_s(n["burst_all_ready"]), "<= 30 s"),
        (f"burst {b}: allowlist ConfigMap writes", d["burst"].writes(cm), n["burst"].writes(cm), "<= 5"),
        (f"burst {b}: puller DaemonSet writes", d["burst"].writes(ds), n["burst"].writes(ds), "<= 5"),
        (
            "  allowlist writes per course change",
            f"{d['burst'].writes(cm) / b:.3f}",
            f"{n['burst'].writes(cm) / b:.3f}",
            "",
        ),
        (
            "  puller writes per course change",
            f"{d['burst'].writes(ds) / b:.3f}",
            f"{n['burst'].writes(ds) / b:.3f}",
            "",
        ),
        (
            f"burst {b}: all API writes (status, events, finalizers too)",
            d["burst"].writes(),
            n["burst"].writes(),
            "",
        ),
        (f"burst {b}: operator CPU seconds", f"{d['burst_cpu']:.1f}", f"{n['burst_cpu']:.1f}", ""),
        ("Helm install/upgrade after the hub install", d["helm_after_install"], n["helm_after_install"], "0"),
    ]
    if "idle" in d:
        i = d["idle"]
        mins = round(args.idle_seconds / 60, 1)
        rows += [
            (f"idle {mins:g} min: allowlist ConfigMap writes", i.writes(cm), "-", "0"),
            (f"idle {mins:g} min: puller DaemonSet writes", i.writes(ds), "-", "0"),
            (f"idle {mins:g} min: all API writes", i.writes(), "-", "0"),
            (f"idle {mins:g} min: Helm install/upgrade", i.helm_mutations(), "-", "0"),
            (f"idle {mins:g} min: Helm calls of any kind", i.helm_calls(), "-", ""),
        ]
    rows.append(("operator peak RSS", f"{d['rss']:.0f} MB", f"{n['rss']:.0f} MB", ""))
    cm_ratio = n["burst"].writes(cm) / max(1, d["burst"].writes(cm))
    ds_ratio = n["burst"].writes(ds) / max(1, d["burst"].writes(ds))
    print(f"\ncourse publishing: {args.singles} single applies, a burst of {b}, idle {args.idle_seconds:g} s")
    print(table(rows, ("figure", "coursehub (debounced)", "naive (debounce off)", "target")))
    print(f"\nnaive/debounced writes in the burst: allowlist x{cm_ratio:.1f}, puller x{ds_ratio:.1f}")
    print(f"burst writes by kind, debounced: {d['burst'].writes_by_kind()}")
    print(f"burst writes by kind, naive:     {n['burst'].writes_by_kind()}")
    if "idle" in d:
        print(
            f"idle writes by kind: {d['idle'].writes_by_kind()}; GETs {d['idle'].reads()}, "
            f"registry calls {d['idle'].registry_calls()}"
        )


if __name__ == "__main__":
    main()
