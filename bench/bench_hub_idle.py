"""A hub at rest (issue 4): Helm and API writes while idle, across a restart, and spec edit -> deployed.

One JupyterHubDeployment with N published courses, then:
1. --idle-seconds with nothing changing: Helm operations and API writes (targets 0 and 0);
2. an operator restart (SIGTERM, start again) with nothing changed: writes and Helm
   installs/upgrades caused by re-reading the world (targets 0 and 0);
3. --edits spec edits (spec.culling.timeoutSeconds), one at a time: time from the PATCH to
   `ReleaseDeployed=True` with observedGeneration equal to the new generation, and Helm
   upgrades per edit (target 1).
Counts come from the operator's metrics; times are polled every 0.1 s from this process.

    uv run python bench/bench_hub_idle.py [--courses 100] [--idle-seconds 600] [--edits 5]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from harness import (
    GROUP_PATH,
    Env,
    bench_course,
    cond,
    fmt_s,
    idle,
    log,
    percentile,
    settle,
    slug,
    table,
    wait_until,
)

REPO_NAME = "courses/idle"
NS, HUB = "bench-idle", "learn"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--courses", type=int, default=100)
    ap.add_argument("--idle-seconds", type=float, default=600)
    ap.add_argument("--edits", type=int, default=5, help="spec edits, one at a time")
    ap.add_argument(
        "--restart-quiet", type=float, default=30, help="seconds to watch after an operator restart"
    )
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    with Env(keep=args.keep) as env:
        slugs = [slug(i) for i in range(args.courses)]
        env.push_images(REPO_NAME, slugs)
        env.api.create_namespace(NS)
        op = env.operator([NS], "idle")
        env.install_hub(NS, HUB, courses={"default": slugs[0]})
        watch = env.watch([NS])
        manifests = [bench_course(i, env.registry.ref(REPO_NAME, s)) for i, s in enumerate(slugs)]
        env.api.create_courses(NS, manifests)
        watch.wait_all([(NS, m["metadata"]["name"]) for m in manifests], "ready", timeout=600)
        settle(op)
        log(f"{args.courses} courses Ready; idle for {args.idle_seconds:g} s")

        # 1. Idle.
        cpu0 = op.cpu_seconds()[0]
        idle_m = idle(op, args.idle_seconds, "hub idle")
        idle_cpu = op.cpu_seconds()[0] - cpu0

        # 2. Restart with nothing changed: every object is re-read, nothing should be rewritten.
        op.stop()
        env.operators.remove(op)
        seen_events = {e["metadata"]["uid"] for e in env.api.get(f"/api/v1/namespaces/{NS}/events")["items"]}
        op = env.operator([NS], "idle-restarted")
        time.sleep(args.restart_quiet)
        restart_m = op.metrics()
        hub = env.api.hub(NS, HUB)
        restart_ok = cond(hub, "Ready").get("status") == "True"
        # What the restart told users: the Events it posted, by kind, reason and condition.
        restart_events = Counter(
            (e["involvedObject"]["kind"], e["reason"], e["message"].split(":")[0])
            for e in env.api.get(f"/api/v1/namespaces/{NS}/events")["items"]
            if e["metadata"]["uid"] not in seen_events
            and (e.get("source") or {}).get("component") == "coursehub"
        )

        # 3. Spec edits: PATCH -> ReleaseDeployed=True on the new generation.
        edit_times, edit_helm = [], []
        for i in range(args.edits):
            before = op.metrics().helm_mutations()
            t0 = time.monotonic()
            patched = env.api.merge_patch(
                f"{GROUP_PATH}/namespaces/{NS}/jupyterhubdeployments/{HUB}",
                {"spec": {"culling": {"timeoutSeconds": 960 + 60 * i}}},
            )
            gen = patched["metadata"]["generation"]

            def deployed(gen=gen):
                h = env.api.hub(NS, HUB)
                c = cond(h, "ReleaseDeployed")
                return (
                    (h.get("status") or {}).get("observedGeneration") == gen
                    and c.get("status") == "True"
                    and c.get("observedGeneration") == gen
                )

            # 0.1 s polls: the edit's time to deployed is measured through this wait.
            wait_until(deployed, timeout=600, interval=0.1, what=f"ReleaseDeployed on generation {gen}")
            edit_times.append(time.monotonic() - t0)
            settle(op, quiet_for=3)
            edit_helm.append(op.metrics().helm_mutations() - before)
            log(
                f"edit {i + 1}: generation {gen} deployed in {fmt_s(edit_times[-1])}, "
                f"helm mutations {edit_helm[-1]}"
            )
        revision = (env.api.hub(NS, HUB).get("status") or {}).get("release", {}).get("revision")
        rss = op.peak_rss_mb()

    mins = round(args.idle_seconds / 60, 1)
    rows = [
        (f"idle {mins:g} min: Helm install/upgrade/rollback", idle_m.helm_mutations(), "0"),
        (f"idle {mins:g} min: Helm calls of any kind (status, get values...)", idle_m.helm_calls(), ""),
        (f"idle {mins:g} min: API writes", idle_m.writes(), "0"),
        (f"idle {mins:g} min: API reads (GET)", idle_m.reads(), ""),
        (f"idle {mins:g} min: registry calls (re-resolution)", idle_m.registry_calls(), ""),
        (f"idle {mins:g} min: operator CPU seconds", f"{idle_cpu:.1f}", ""),
        (f"restart, first {args.restart_quiet:g} s: API writes", restart_m.writes(), "0"),
        (f"restart, first {args.restart_quiet:g} s: Helm install/upgrade", restart_m.helm_mutations(), "0"),
        (f"restart, first {args.restart_quiet:g} s: Helm calls of any kind", restart_m.helm_calls(), ""),
        ("hub Ready after the restart", restart_ok, "True"),
        (
            f"spec edit -> ReleaseDeployed (new generation) p50, n={args.edits}",
            fmt_s(percentile(edit_times, 50)),
            "",
        ),
        ("spec edit -> ReleaseDeployed max", fmt_s(max(edit_times) if edit_times else float("nan")), ""),
        ("Helm upgrades per spec edit", ", ".join(map(str, edit_helm)), "1 each"),
        ("release revision at the end", revision, f"{1 + args.edits}"),
        ("operator peak RSS (restarted process)", f"{rss:.0f} MB", ""),
    ]
    print(
        f"\nhub at rest: 1 hub, {args.courses} courses, idle {args.idle_seconds:g} s, {args.edits} spec edits"
    )
    print(table(rows, ("figure", "measured", "target")))
    print(f"idle writes by kind: {idle_m.writes_by_kind()}")
    print(f"restart writes by kind: {restart_m.writes_by_kind()}")
    print("events posted after the restart (count, (kind, reason, condition)):")
    for k, v in restart_events.most_common():
        print(f"  {v:5d} {k}")


if __name__ == "__main__":
    main()
