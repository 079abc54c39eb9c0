"""Failover (issue 16): two operator replicas with leader election; `kill -9` the leader N times.

Each round: a fresh image is pushed, the leader is killed with SIGKILL, and at once a new
CourseImage is created. Failover time = from the kill until that course is Published by the
replica that took over (stamped by a watch in this process). The killed replica is started
again as the next standby, and the round waits until it reads the Lease before the next kill.
Also counted: writes of the new leader to objects that were already reconciled (should be 0),
from the operators' own metrics and the objects' resourceVersions.

    uv run python bench/bench_failover.py [--kills 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from harness import (
    GROUP_PATH,
    Env,
    cond_true_now,
    course_manifest,
    fmt_s,
    log,
    percentile,
    table,
    wait_until,
)

REPO_NAME = "courses/failover"
LEASE_REQUESTS = "coursehub_kube_requests_total"
LEASE_NS, HUB_NS, LEASE = "coursehub-ops", "failover", "coursehub-operator"


def holder(env: Env) -> str:
    lease = env.api.get_or_none(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{LEASE}")
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from coursehub.settings import Settings

    defaults = Settings()
    rows, times = [], []
    with Env(keep=args.keep) as env:
        env.api.create_namespace(LEASE_NS)
        env.api.create_namespace(HUB_NS)
        replicas: dict[str, object] = {}
        serial = 0

        def start(name: str):
            nonlocal serial
            serial += 1
            op = env.operator(
                [HUB_NS],
                f"{name}-{serial}",
                {
                    "COURSEHUB_LEADER_ELECTION": "true",
                    "COURSEHUB_LEASE_NAMESPACE": LEASE_NS,
                    "COURSEHUB_LEASE_NAME": LEASE,
                    "COURSEHUB_IDENTITY": f"{name}-{serial}",
                },
            )
            replicas[f"{name}-{serial}"] = op
            return op

        start("r")
        wait_until(lambda: holder(env), timeout=60, what="a leader")
        start("r")
        env.install_hub(HUB_NS, timeout=600)
        watch = env.watch([HUB_NS])
        for k in range(args.kills):
            leader = holder(env)
            op = replicas.pop(leader)
            # The standby has read the Lease at least once (its election runs).
            standby = next(iter(replicas.values()))
            wait_until(
                lambda standby=standby: (
                    standby.metrics().sum("coursehub_kube_requests_total", kind="Lease") > 0
                ),
                timeout=60,
                what="the standby reads the Lease",
            )
            ref = env.push_images(REPO_NAME, [f"k{k}"], seed=f"failover-{time.time()}")[f"k{k}"]
            # Courses already Ready: a write to one of them after the kill is a second write (one
            # still pre-pulling may rightly get its PrePulled=True from the new leader).
            before = {
                o["metadata"]["name"]: o["metadata"]["resourceVersion"]
                for o in env.api.get(f"{GROUP_PATH}/namespaces/{HUB_NS}/courseimages")["items"]
                if cond_true_now(o, "Ready")
            }
            t_kill = time.monotonic()
            os.killpg(op.proc.pid, signal.SIGKILL)
            op.proc.wait()
            env.operators.remove(op)
            env.api.create(
                f"{GROUP_PATH}/namespaces/{HUB_NS}/courseimages",
                course_manifest(f"k{k}", f"failover.k{k}", ref),
            )
            watch.wait_all([(HUB_NS, f"k{k}")], "published", timeout=120)
            took = watch.published[(HUB_NS, f"k{k}")] - t_kill
            times.append(took)
            new_leader = holder(env)
            # Objects reconciled before the kill and written again by the new leader.
            time.sleep(3)
            after = {
                o["metadata"]["name"]: o["metadata"]["resourceVersion"]
                for o in env.api.get(f"{GROUP_PATH}/namespaces/{HUB_NS}/courseimages")["items"]
            }
            rewritten = sum(1 for n, rv in before.items() if after.get(n) != rv)
            log(
                f"kill {k + 1}: {leader} -> {new_leader}, published after {took:.2f} s, rewritten {rewritten}"
            )
            rows.append((k + 1, leader, new_leader, fmt_s(took), rewritten))
            start("r")  # the next standby
        watch.stop()

    print(
        f"\nFailover: {args.kills} x kill -9 of the leader; lease duration {defaults.lease_duration:g} s, "
        f"renew {defaults.lease_renew:g} s, renew deadline {defaults.lease_renew_deadline:g} s, "
        f"retry {defaults.lease_retry:g} s; a new CourseImage created right after each kill\n"
    )
    print(
        table(rows, ("kill", "killed", "took over", "kill -> new course Published", "old courses rewritten"))
    )
    print(f"\np50 {fmt_s(percentile(times, 50))}, max {fmt_s(max(times) if times else float('nan'))}")


if __name__ == "__main__":
    main()
