"""The API server's share of a 1,000-course burst (issue 16), with no operator running.

On the local control plane, the writes a burst of N CourseImages costs at the least, each kind
on its own: the N POSTs (as bench_scale sends them: 8 threads), one finalizer merge patch per
course, and 2 status server-side applies per course (the shape the operator writes), then the
same status once more as a merge patch for comparison; then the general puller DaemonSet
growing to N init containers in 4 writes (on no node, so no pods), applied, then updated (PUT).
Two watches on CourseImages are open throughout (the operator's and the benchmark's). Per kind:
wall time, writes per second, and CPU seconds of kube-apiserver, etcd and this process (/proc).
This is the floor under bench_scale's "time until all Ready" on the same machine: if the API server alone
needs more CPU than the machine has in 10 s, no operator reaches 10 s there.

    uv run python bench/bench_apiserver_writes.py [--courses 1000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import CLK_TCK, GROUP_PATH, Env, bench_course, log, table

NS = "writes"
FINALIZER = "coursehub.dev/unpublish"


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_body(name: str, i: int, step: int) -> dict:
    """A CourseImage status as the operator writes it: step 0 published and pulling, 1 Ready."""
    digest = "sha256:" + f"{i:064d}"
    now = "2026-11-30T16:00:00Z"

    def c(type_, status, reason, message):
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
            "observedGeneration": 1,
        }

    ready = step == 1
    return {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "CourseImage",
        "metadata": {"name": name, "namespace": NS},
        "status": {
            "observedGeneration": 1,
            "hubs": [f"{NS}/learn"],
            "resolvedImage": f"127.0.0.1:5000/courses/scale@{digest}",
            "digest": digest,
            "resolvedAt": now,
            "launchURL": f"https://{NS}.example.edu/hub/spawn?course=c{i}",
            "conditions": [
                c("Ready", "True" if ready else "False", "Ready" if ready else "Pulling", "x" * 40),
                c("ImageResolved", "True", "Resolved", f"127.0.0.1:5000/courses/scale:c{i} is {digest}"),
                c("Published", "True", "Published", f"offered by {NS}/learn"),
                c("PrePulled", "True" if ready else "False", "PrePulled" if ready else "Pulling", "y" * 50),
            ],
        },
    }


def puller(n: int) -> dict:
    """A DaemonSet shaped like the operator's general puller with n course init containers, on no
    node (its pods would add their own cost: this is the write alone)."""

    def container(i: int) -> dict:
        return {
            "name": f"course-{i:05d}",
            "image": f"127.0.0.1:5000/courses/scale@sha256:{i:064d}",
            "imagePullPolicy": "IfNotPresent",
            "command": ["/coursehub-noop/noop"],
            "workingDir": "/coursehub-noop",
            "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "noop", "mountPath": "/coursehub-noop", "readOnly": True}],
        }

    labels = {"app": "puller"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "puller", "namespace": NS, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [container(i) for i in range(n)],
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}],
                    "volumes": [{"name": "noop", "emptyDir": {}}],
                    "nodeSelector": {"coursehub.dev/no-such-node": "true"},
                },
            },
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--courses", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16, help="writes in flight (the operator's 16)")
    args = ap.parse_args()
    n = args.courses
    rows = []
    with Env() as env:
        api = env.api
        procs = env.cluster._procs
        pids = {name: procs[name].pid for name in ("kube-apiserver", "etcd")}
        api.create_namespace(NS)
        stop = threading.Event()

        def watch() -> None:  # a client that reads every event, as the operator and bench do
            s = api.session()
            with s.get(
                api.base + f"{GROUP_PATH}/namespaces/{NS}/courseimages",
                params={"watch": "true"},
                stream=True,
                timeout=(10, 600),
            ) as r:
                for line in r.iter_lines():
                    if stop.is_set():
                        return
                    json.loads(line)

        for _ in range(2):
            threading.Thread(target=watch, daemon=True).start()
        time.sleep(1)
        manifests = [bench_course(i, f"127.0.0.1:5000/courses/scale:c{i}") for i in range(n)]
        names = [m["metadata"]["name"] for m in manifests]
        base = f"{GROUP_PATH}/namespaces/{NS}/courseimages"

        def measure(label: str, workers: int, fn, items) -> None:
            cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
            me0 = os.times()
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(fn, items))
            wall = time.monotonic() - t0
            me1 = os.times()
            cpu = {k: proc_cpu(p) - cpu0[k] for k, p in pids.items()}
            mine = me1.user + me1.system - me0.user - me0.system
            api_s = cpu["kube-apiserver"]
            rows.append(
                (
                    label,
                    len(items),
                    f"{wall:.1f} s",
                    f"{len(items) / wall:.0f}",
                    f"{api_s:.1f} s ({api_s / len(items) * 1000:.1f} ms each)",
                    f"{cpu['etcd']:.1f} s",
                    f"{mine:.1f} s",
                )
            )
            log(f"{label}: {rows[-1][2:]}")

        measure("POST CourseImage (8 threads)", 8, lambda m: api.create(base, m), manifests)
        measure(
            "PATCH CourseImage finalizer (merge patch)",
            args.concurrency,
            lambda name: api.merge_patch(f"{base}/{name}", {"metadata": {"finalizers": [FINALIZER]}}),
            names,
        )
        for step in (0, 1):

            def apply(item, step=step):
                i, name = item
                r = api.http.patch(
                    api.base + f"{base}/{name}/status",
                    data=json.dumps(status_body(name, i, step)),
                    params={"fieldManager": "coursehub", "force": "true"},
                    headers={"Content-Type": "application/apply-patch+yaml"},
                    timeout=30,
                )
                api._check(r)

            measure(
                f"PATCH CourseImage/status (server-side apply, {step + 1} of 2)",
                args.concurrency,
                apply,
                list(enumerate(names)),
            )
        # The same write as a JSON merge patch (what it would cost without server-side apply).
        measure(
            "PATCH CourseImage/status (merge patch, for comparison)",
            args.concurrency,
            lambda item: api.merge_patch(
                f"{base}/{item[1]}/status", {"status": status_body(item[1], item[0], 0)["status"]}
            ),
            list(enumerate(names)),
        )
        # The general puller as a burst grows it (4 writes, up to N init containers): server-side
        # apply as the operator does, then the same objects as plain updates (PUT).
        ds_path = f"/apis/apps/v1/namespaces/{NS}/daemonsets"
        sizes = [n * k // 4 for k in (1, 2, 3, 4)]

        def ds_apply(size: int) -> None:
            r = api.http.patch(
                api.base + f"{ds_path}/puller",
                data=json.dumps(puller(size)),
                params={"fieldManager": "coursehub", "force": "true"},
                headers={"Content-Type": "application/apply-patch+yaml"},
                timeout=60,
            )
            api._check(r)

        def ds_put(size: int) -> None:
            for _ in range(5):  # the DaemonSet controller writes its status in between: 409, again
                live = api.get(f"{ds_path}/puller")
                body = puller(size)
                body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                r = api.http.put(api.base + f"{ds_path}/puller", json=body, timeout=60)
                if r.status_code != 409:
                    break
            api._check(r)

        measure(
            f"DaemonSet puller, server-side apply ({'/'.join(map(str, sizes))} containers)",
            1,
            ds_apply,
            sizes,
        )
        measure(
            f"DaemonSet puller, update (PUT; GET first) ({'/'.join(map(str, sizes))})",
            1,
            ds_put,
            sizes,
        )
        stop.set()
    print(f"\nAPI server writes for {n} CourseImages, no operator; machine: {os.cpu_count()} cores")
    print(
        table(
            rows,
            ("writes", "count", "wall", "per s", "kube-apiserver CPU", "etcd CPU", "this client's CPU"),
        )
    )


if __name__ == "__main__":
    main()
