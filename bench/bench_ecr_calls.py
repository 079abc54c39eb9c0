"""ECR API calls: image resolution (this tree vs the previous main) and lifecycle policies.

Runs moto's ECR server on loopback behind the counting proxy from tests/fixtures/ecr.py.

Resolution: --resolve-courses images are pushed to one repository; then the operator's own
resolver (reconcile.resolver.Resolver, no Kubernetes needed) resolves every course once, in
a child process per source tree: this working tree, and the previous main from a temporary
git worktree (--base REV, default harness.BASE_DEFAULT; --no-base skips it). The proxy counts
describe_images calls per round; calls per hour follow from each tree's interval at its
defaults (the previous main: every 300 s; this tree: 300 s for a digest that just moved,
growing to 3,600 s for one unchanged for a day).

Lifecycle: applies the policies once (the first reconcile), then --rounds more rounds with
unchanged courses, and prints the calls per operation, per round and per hour.

Counts and ratios only: nothing here is timed or asserted.

    uv run python bench/bench_ecr_calls.py [--resolve-courses 1000] [--courses 100] [--rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

STEMS = ["uai_source-uai.", "mitxt-6.", "mitxt-18.", "clustering_and_descriptive_ai_", "ml_"]
RESOLVE_REPO = "ol-course-notebooks-resolve"


def slugs(n: int) -> list[str]:
    return [f"{STEMS[i % len(STEMS)]}{i}{'a' if i % 3 == 0 else ''}" for i in range(n)]


# -- child: one round of resolution with whatever `coursehub` is on the path -----------------
async def resolve_round(endpoint: str, courses: int) -> dict:
    from coursehub.api.courseimage import CourseImageSpec
    from coursehub.desired.courses import CourseRecord
    from coursehub.reconcile.resolver import Resolver
    from coursehub.settings import Settings
    from coursehub.state import Index
    from fixtures.ecr import ECR_HOST

    idx = Index()
    for s in slugs(courses):
        spec = CourseImageSpec(course=s, image=f"{ECR_HOST}/{RESOLVE_REPO}:{s}")
        idx.courses[("bench", s)] = CourseRecord("bench", s, "u", "2026-01-01T00:00:00Z", 1, (), spec)
    settings = Settings(aws_endpoint_url=endpoint)
    resolver = Resolver(None, idx, settings)  # type: ignore[arg-type]  # no pull secrets, no Events
    task = asyncio.create_task(resolver.run())
    try:
        for key in idx.courses:
            resolver.schedule(key)
        async with asyncio.timeout(900):
            while len(idx.resolutions) < courses:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
    try:
        from coursehub.desired.recheck import DAY, recheck_interval

        longest = settings.resolve_interval_max  # type: ignore[attr-defined]
        fresh = recheck_interval(0, shortest=settings.resolve_interval, longest=longest)
        old = recheck_interval(DAY, shortest=settings.resolve_interval, longest=longest)
    except ImportError:  # the previous main: one fixed interval
        fresh = old = settings.resolve_interval
    ok = sum(r.ok for r in idx.resolutions.values())
    return {"resolved": len(idx.resolutions), "ok": ok, "fresh_interval": fresh, "day_interval": old}


def run_child(args, endpoint: str, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", endpoint, "--resolve-courses", str(args.resolve_courses)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def resolution(args, moto_url: str) -> None:
    from fixtures.ecr import EcrProxy, create_repository, put_image
    from harness import SourceTree, log

    create_repository(moto_url, RESOLVE_REPO)
    log(f"pushing {args.resolve_courses} images to moto")
    for s in slugs(args.resolve_courses):
        put_image(moto_url, RESOLVE_REPO, s, seed=s)
    proxy = EcrProxy(moto_url)
    results: dict[str, tuple[dict, int]] = {}
    try:
        trees = [("this tree", None)] + ([] if args.no_base else [("previous main", args.base)])
        for label, rev in trees:
            proxy.clear()
            if rev is None:
                results[label] = (run_child(args, proxy.url, {}), proxy.counts["DescribeImages"])
                continue
            with SourceTree(rev) as tree:
                got = run_child(args, proxy.url, tree.env())
                results[f"{label} {tree.commit}"] = (got, proxy.counts["DescribeImages"])
    finally:
        proxy.close()
    n = args.resolve_courses
    print(f"\nECR resolution: {n} courses in one repository, one round each")
    print(f"{'':44}" + "".join(f"{k:>28}" for k in results))
    rows = [
        ("courses resolved (ok)", lambda r, c: f"{r['resolved']} ({r['ok']})"),
        ("describe_images calls per round", lambda r, c: str(c)),
        ("calls per course per round", lambda r, c: f"{c / n:.3f}"),
        ("calls per hour, digests just moved", lambda r, c: f"{c * 3600 / r['fresh_interval']:.0f}"),
        ("calls per hour, digests a day old", lambda r, c: f"{c * 3600 / r['day_interval']:.0f}"),
    ]
    for label, f in rows:
        print(f"{label:44}" + "".join(f"{f(r, c):>28}" for r, c in results.values()))


def lifecycle(args, moto_url: str) -> None:
    from coursehub.desired.lifecycle import CourseUsage, build_lifecycle_policies
    from coursehub.registry.ecr_lifecycle import apply_lifecycle_policies
    from fixtures.ecr import ECR_HOST, EcrProxy, create_repository

    proxy = EcrProxy(moto_url)
    try:
        repos = [
            f"ol-course-notebooks-{i}" if args.repos > 1 else "ol-course-notebooks" for i in range(args.repos)
        ]
        for r in repos:
            create_repository(moto_url, r)  # straight to moto: not counted
        usages = [
            CourseUsage(repos[i % len(repos)], ECR_HOST, s, None, s, 5)
            for i, s in enumerate(slugs(args.courses))
        ]

        def round_() -> dict[str, int]:
            proxy.clear()
            results = apply_lifecycle_policies(build_lifecycle_policies(usages), endpoint_url=proxy.url)
            bad = [r for r in results.values() if not r.ok]
            if bad:
                raise SystemExit(f"unexpected failures: {bad}")
            return dict(proxy.counts)

        first = round_()
        steady = [round_() for _ in range(args.rounds)]
        policies = build_lifecycle_policies(usages)
    finally:
        proxy.close()

    gets = sum(r.get("GetLifecyclePolicy", 0) for r in steady)
    puts = sum(r.get("PutLifecyclePolicy", 0) for r in steady)
    other = sum(
        v for r in steady for k, v in r.items() if k not in ("GetLifecyclePolicy", "PutLifecyclePolicy")
    )
    per_hour = 60.0 / args.interval_minutes
    print(f"\nECR lifecycle: courses={args.courses} repositories={len(repos)} steady rounds={args.rounds}")
    for key, rp in policies.items():
        grouped = sum("grouped under" in text for text in rp.summaries.values())
        print(
            f"  {key}: {len(rp.policy['rules'])} rules, {len(rp.text)} chars, "
            f"{len(rp.groups)} groups holding {grouped} of {len(rp.summaries)} courses"
        )
    print(f"first apply:   {first}")
    print(f"steady total:  GetLifecyclePolicy={gets} PutLifecyclePolicy={puts} other={other}")
    print(f"per round:     get={gets / args.rounds:.2f} put={puts / args.rounds:.2f}")
    print(
        f"per hour at {args.interval_minutes:g}-minute rounds: "
        f"get={gets / args.rounds * per_hour:.0f} put={puts / args.rounds * per_hour:.0f} "
        f"(lifecycle calls per course per hour: {(gets + puts) / args.rounds * per_hour / args.courses:.3f})"
    )
    print(f"put/get ratio in steady state: {puts / gets if gets else 0:.3f} (target 0)")


def main() -> None:
    from harness import add_base_args

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--resolve-courses", type=int, default=1000, help="courses in the resolution part (0: skip)"
    )
    ap.add_argument("--courses", type=int, default=100, help="courses in the lifecycle part (0: skip)")
    ap.add_argument("--rounds", type=int, default=12, help="steady lifecycle rounds after the first apply")
    ap.add_argument(
        "--repos", type=int, default=1, help="spread lifecycle courses over this many repositories"
    )
    ap.add_argument("--interval-minutes", type=float, default=5.0)
    ap.add_argument("--child", metavar="ENDPOINT", help=argparse.SUPPRESS)
    add_base_args(ap)
    args = ap.parse_args()
    from fixtures.ecr import FAKE_AWS_ENV, start_moto

    os.environ.update(FAKE_AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log
    if args.child:
        print(json.dumps(asyncio.run(resolve_round(args.child, args.resolve_courses))))
        return
    server, moto_url = start_moto()
    try:
        if args.resolve_courses:
            resolution(args, moto_url)
        if args.courses:
            lifecycle(args, moto_url)
    finally:
        server.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
