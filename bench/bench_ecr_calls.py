"""ECR API calls made by lifecycle reconciliation with 100 courses and nothing changing.

Runs moto's ECR server on loopback behind the counting proxy from tests/fixtures/ecr.py,
applies the policies once (the first reconcile), then N more rounds with unchanged
courses, and prints the calls per operation, per round and extrapolated per hour for a
re-resolve interval of 5 minutes. Counts and ratios only: nothing here is timed.

    uv run python bench/bench_ecr_calls.py [--courses 100] [--rounds 12] [--repos 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from coursehub.desired.lifecycle import CourseUsage, build_lifecycle_policies
from coursehub.registry.ecr_lifecycle import apply_lifecycle_policies
from fixtures.ecr import ECR_HOST, FAKE_AWS_ENV, EcrProxy, create_repository, start_moto

STEMS = ["uai_source-uai.", "mitxt-6.", "mitxt-18.", "clustering_and_descriptive_ai_", "ml_"]


def slugs(n: int) -> list[str]:
    return [f"{STEMS[i % len(STEMS)]}{i}{'a' if i % 3 == 0 else ''}" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--courses", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=12, help="steady rounds after the first apply")
    ap.add_argument("--repos", type=int, default=1, help="spread the courses over this many repositories")
    ap.add_argument("--interval-minutes", type=float, default=5.0)
    args = ap.parse_args()
    os.environ.update(FAKE_AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log

    server, moto_url = start_moto()
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
        server.stop()

    gets = sum(r.get("GetLifecyclePolicy", 0) for r in steady)
    puts = sum(r.get("PutLifecyclePolicy", 0) for r in steady)
    other = sum(
        v for r in steady for k, v in r.items() if k not in ("GetLifecyclePolicy", "PutLifecyclePolicy")
    )
    per_hour = 60.0 / args.interval_minutes
    print(f"courses={args.courses} repositories={len(repos)} steady rounds={args.rounds}")
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
    print(
        "note: image re-resolution (the resolver's own calls, about one per course per round) "
        f"would add about {args.courses * per_hour:.0f} calls per hour; not counted here"
    )


if __name__ == "__main__":
    main()
