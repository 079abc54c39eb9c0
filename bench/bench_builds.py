"""Course builds (issue 14) on a real node: commit -> a new learner gets the new image, and build
time cold vs with the layer cache.

Starts a dev cluster with one real node, the buildah image, a git server (git http-backend over
HTTPS on the host bridge address), the operator as a process and a hub. Then:

1. Cold vs cached: a course whose Dockerfile has an expensive step (`RUN`: a venv, and a dataset
   precomputed in pure Python, about 20 s of one core here) is built once with an empty layer
   cache (a new repository, so a new cache repository), then a commit that changes only the file
   of the last `COPY`: the expensive layer comes from the registry cache. Build time is the build
   Job's start -> completion (status.build durationSeconds).
2. Commit -> learner: --commits commits (each changing only that late file, so each build uses
   the cache), each followed by a signed push webhook (as a forge sends it); the time from
   `git push` until the hub's allowlist (what a new learner's spawn reads) names the new digest.
   p50 and max, and the builds' own p50; polling instead of a webhook adds up to
   spec.build.pollSeconds.

Times only, printed side by side; nothing asserted. Run it alone (2 cores):

    flock /tmp/coursehub-e2e.lock uv run python bench/bench_builds.py [--commits 5]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from coursehub_dev import samples  # noqa: E402
from coursehub_dev.waiting import wait_until  # noqa: E402
from fixtures.builds import build_stack  # noqa: E402
from harness import fmt_s, log, percentile  # noqa: E402

NS = "courses"
# The course repository: its environment made the way a course's is (a venv, pip's many files)
# plus a dataset its notebooks read, precomputed at build time: pure-Python CPU work of about
# 20 s on this machine, no network. Both are in one early layer; version.txt, copied last, is
# what the later commits change, so with the layer cache their builds reuse that layer.
DOCKERFILE = (
    "ARG BASE_IMAGE\nFROM $BASE_IMAGE\n"
    "COPY precompute.py /opt/precompute.py\n"
    "RUN python3 -m venv /opt/course && /opt/course/bin/python /opt/precompute.py /opt/course/fractal.csv\n"
    "COPY version.txt /version.txt\n"
)
PRECOMPUTE = """\
# The escape times of a 1400 x 1050 grid of the Mandelbrot set (the course's plots read them).
import sys

W, H, N = 1400, 1050, 256
rows = []
for j in range(H):
    y = -1.2 + 2.4 * j / H
    row = []
    for i in range(W):
        x = -2.0 + 3.0 * i / W
        zr = zi = 0.0
        k = 0
        while k < N and zr * zr + zi * zi < 4.0:
            zr, zi = zr * zr - zi * zi + x, 2 * zr * zi + y
            k += 1
        row.append(k)
    rows.append(",".join(map(str, row)))
with open(sys.argv[1], "w") as f:
    f.write("\\n".join(rows) + "\\n")
"""


def course(name: str, registry: str, base: str, url: str) -> dict:
    return samples.course_manifest(
        name,
        name,
        f"{registry}/bench/{name}:{name}",
        prePull=False,
        build={
            "git": {"url": url},
            "buildArgs": [{"name": "BASE_IMAGE", "value": base}],
            "pollSeconds": 3600,
        },
    )


def revision() -> str:
    """The commit measured; '+' when the code it runs (operator, dev tooling, fixtures, bench)
    has uncommitted changes in this working tree."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "operator", "dev", "tests/fixtures", "bench")
    return git("rev-parse", "--short=12", "HEAD") + ("+" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-builds-"))
    secret = uuid.uuid4().hex
    t0 = time.monotonic()
    with build_stack(root, NS, secret) as stack:
        cluster, git, registry, base, port = (
            stack.cluster,
            stack.git,
            stack.registry,
            stack.base,
            stack.webhook_port,
        )
        log(f"cluster, images, git server and operator in {time.monotonic() - t0:.1f} s")

        def get(name: str) -> dict:
            return json.loads(cluster.kubectl("get", "courseimage", name, "-n", NS, "-o", "json").stdout)

        def built(name: str, commit: str) -> dict:
            def ok():
                o = get(name)
                b = (o.get("status") or {}).get("build") or {}
                return (
                    o if b.get("commit") == commit and (b.get("last") or {}).get("commit") == commit else None
                )

            def failed() -> str | None:
                last = ((get(name).get("status") or {}).get("build") or {}).get("last") or {}
                if last.get("commit") == commit and last.get("result") == "Failed":
                    return f"build failed: {last.get('message')}"
                return None

            return wait_until(
                ok, timeout=900, interval=0.5, what=f"{name} built at {commit[:12]}", abort=failed
            )

        def offered(slug: str) -> str | None:
            cm = cluster.kubectl(
                "get", "configmap", "coursehub-allowlist", "-n", NS, "-o", "json", check=False
            )
            if cm.returncode != 0:
                return None
            doc = json.loads(json.loads(cm.stdout)["data"]["allowlist.json"])
            return ((doc.get("courses") or {}).get(slug) or {}).get("image")

        def webhook(repo: str, commit: str) -> None:
            body = json.dumps(
                {"ref": "refs/heads/main", "after": commit, "repository": {"clone_url": git.url(repo)}}
            ).encode()
            sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            r = requests.post(
                f"http://127.0.0.1:{port}/hooks/git",
                data=body,
                headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sig},
                timeout=10,
            )
            r.raise_for_status()

        # 1. cold vs cached
        # A course name of this run: the registry outlives runs, and an earlier run's cache
        # repository (bench/<name>-buildcache) would make the "cold" build a cache hit.
        slow = f"slow-{uuid.uuid4().hex[:8]}"
        first = git.create(
            slow, {"Dockerfile": DOCKERFILE, "precompute.py": PRECOMPUTE, "version.txt": "0\n"}
        )
        cluster.kubectl(
            "apply",
            "-n",
            NS,
            "-f",
            "-",
            input=yaml.safe_dump(course(slow, registry, base, git.url(slow))),
        )

        def expensive_step(record: dict) -> str:
            """What the build log says of the expensive RUN step: a cache hit or a run."""
            out = cluster.kubectl("logs", f"job/{record['last']['job']}", "-n", NS, check=False).stdout
            after = out.split("RUN python3 -m venv", 1)[-1].split("\nSTEP ", 1)[0]
            said = [ln.strip() for ln in after.splitlines() if "cache" in ln.lower()]
            return "; ".join(said) or "ran (no cache line)"

        record = built(slow, first)["status"]["build"]
        cold = record["last"]["durationSeconds"]
        log(f"cold build {cold} s; its expensive step: {expensive_step(record)}")
        second = git.commit(slow, {"version.txt": "1\n"})
        webhook(slow, second)
        record = built(slow, second)["status"]["build"]
        warm = record["last"]["durationSeconds"]
        warm_step = expensive_step(record)
        log(f"rebuild {warm} s; its expensive step: {warm_step}")

        # 2. commit -> a new learner gets the new image (webhook right after the push)
        waits: list[float] = []
        builds: list[int] = []
        wait_until(lambda: offered(slow), timeout=300, what="the course offered")
        for i in range(args.commits):
            pushed = time.monotonic()
            commit = git.commit(slow, {"version.txt": f"{i + 2}\n"})
            webhook(slow, commit)
            record = built(slow, commit)["status"]["build"]
            digest = record["digest"]
            builds.append(record["last"]["durationSeconds"])
            log(f"build {builds[-1]} s; its expensive step: {expensive_step(record)}")
            wait_until(
                lambda d=digest: (offered(slow) or "").endswith(d),
                timeout=300,
                interval=0.2,
                what="offered",
            )
            waits.append(time.monotonic() - pushed)
            log(f"commit {i + 1}: {waits[-1]:.1f} s")

        print(f"\n== course builds (one real node, 2 cores; coursehub {revision()}) ==")
        print(f"build time, empty layer cache:              {cold} s")
        print(f"build time, late file changed, layer cache: {warm} s  (ratio {cold / max(warm, 1):.1f}x)")
        print(f"  the expensive step in that rebuild: {warm_step}")
        print(
            f"commit -> new learner gets the image: p50 {fmt_s(percentile(waits, 50))}, "
            f"max {fmt_s(max(waits))} over {len(waits)} commits (webhook); their builds p50 "
            f"{percentile([float(b) for b in builds], 50):.0f} s"
        )
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
