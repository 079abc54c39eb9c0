"""ECR lifecycle policies derived from the courses that use each repository (pure).

For every repository this computes one policy document with, in priority order:

1. protect rules: one per tag a course currently uses (exact ``tagPatternList``, no
   wildcard). ECR never lets a lower-priority rule expire an image that matches a
   higher-priority rule's tag selection, and the count is far above any repository's
   image quota, so these images never expire;
2. group rules (only when the courses outgrow the policy size limit): ``<prefix>*``
   rules that keep every image under a shared prefix (see ``_choose_groups``);
3. keep rules: per course, the last ``keep`` builds (``<slug>-*``), most specific
   prefix first so that a course whose tags start with another course's build prefix
   is judged by its own rule and never by the other's;
4. one untagged rule: expire untagged images after ``untagged_days`` days (omitted while
   a course uses an image by digest only, because rules cannot select by digest).

No I/O here: ``coursehub.registry.ecr_lifecycle`` applies the result.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Service quota "Lifecycle policy length" (not adjustable) and botocore's
# LifecyclePolicyText shape (min 100, max 30720 characters).
MAX_POLICY_CHARS = 30_720
MIN_POLICY_CHARS = 100
MAX_WILDCARDS_PER_PATTERN = 4
# Above the default "images per repository" quota (100,000), so a protect rule can
# never see more images than it keeps.
PROTECT_COUNT = 1_000_000
DEFAULT_KEEP = 5
DEFAULT_UNTAGGED_DAYS = 7

_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class CourseUsage:
    """One course's use of an image in an ECR repository (one CourseImage)."""

    repository: str  # e.g. "ol-course-notebooks"
    registry_host: str  # e.g. "610119931565.dkr.ecr.us-east-1.amazonaws.com"
    tag: str | None  # the tag the CourseImage names (protected), None if by digest
    digest: str | None  # resolved digest, informative
    slug: str  # spec.course; builds are tagged "<slug>-<describe>"
    keep: int = DEFAULT_KEEP  # spec.retention.keep

    def __post_init__(self) -> None:
        if not isinstance(self.keep, int) or isinstance(self.keep, bool) or self.keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {self.keep!r}")
        if not self.slug or not set(self.slug) <= _TAG_CHARS:
            # '*' would turn into a wildcard in the patterns built from the slug.
            raise ValueError(f"slug {self.slug!r} may only hold letters, digits, '_', '.', '-'")
        if self.tag is not None and (not self.tag or not set(self.tag) <= _TAG_CHARS):
            raise ValueError(f"tag {self.tag!r} is not a valid image tag")
        if self.tag is None and self.digest is None:
            raise ValueError("a usage needs a tag or a digest")

    @property
    def key(self) -> str:
        return repository_key(self.registry_host, self.repository)

    @property
    def build_prefix(self) -> str:
        return build_prefix(self.slug)


def repository_key(registry_host: str, repository: str) -> str:
    """The key of a repository in ``build_lifecycle_policies``' result."""
    return f"{registry_host}/{repository}"


def build_prefix(slug: str) -> str:
    # The '-' matters: "uai_source-uai.1-*" does not select "uai_source-uai.1a-…".
    return f"{slug}-"


@dataclass(frozen=True)
class RepositoryPolicy:
    """The desired lifecycle policy of one repository and what it means per course."""

    registry_host: str
    repository: str
    policy: dict[str, Any]
    summaries: Mapping[str, str]  # course slug -> one human sentence
    groups: tuple[str, ...] = ()  # prefixes kept whole to fit the limits
    notes: tuple[str, ...] = ()  # repository-wide remarks

    @property
    def key(self) -> str:
        return repository_key(self.registry_host, self.repository)

    @property
    def text(self) -> str:
        return policy_text(self.policy)


def policy_text(policy: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON: what is sent to ECR and measured against its limit."""
    return json.dumps(policy, sort_keys=True, separators=(",", ":"))


def normalize_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """A policy in a canonical form, so two documents meaning the same compare equal.

    Rules are ordered by priority and tag lists sorted (a list is an AND of its
    entries, so their order carries no meaning).
    """
    rules = []
    for rule in policy.get("rules", []):
        rule = json.loads(json.dumps(rule))
        selection = rule.get("selection", {})
        for key in ("tagPatternList", "tagPrefixList"):
            if isinstance(selection.get(key), list):
                selection[key] = sorted(selection[key])
        rules.append(rule)
    rules.sort(key=lambda r: (r.get("rulePriority", 0), json.dumps(r, sort_keys=True)))
    out = {k: v for k, v in policy.items() if k != "rules"}
    out["rules"] = rules
    return out


@dataclass
class _Course:
    slug: str
    keep: int = 0
    tags: set[str] = field(default_factory=set)
    digest_only: set[str] = field(default_factory=set)

    @property
    def prefix(self) -> str:
        return build_prefix(self.slug)


def build_lifecycle_policies(
    usages: Iterable[CourseUsage],
    *,
    untagged_days: int = DEFAULT_UNTAGGED_DAYS,
    max_chars: int = MAX_POLICY_CHARS,
) -> dict[str, RepositoryPolicy]:
    """One policy per repository used by at least one course, keyed by ``host/repo``."""
    by_repo: dict[str, list[CourseUsage]] = defaultdict(list)
    for usage in usages:
        by_repo[usage.key].append(usage)
    return {
        key: build_repository_policy(group, untagged_days=untagged_days, max_chars=max_chars)
        for key, group in sorted(by_repo.items())
    }


def build_repository_policy(
    usages: Iterable[CourseUsage],
    *,
    untagged_days: int = DEFAULT_UNTAGGED_DAYS,
    max_chars: int = MAX_POLICY_CHARS,
) -> RepositoryPolicy:
    usages = sorted(usages, key=lambda u: (u.key, u.slug, u.tag or "", u.digest or "", u.keep))
    if not usages:
        raise ValueError("no usages: a repository without courses gets no policy from coursehub")
    if len({u.key for u in usages}) != 1:
        raise ValueError("build_repository_policy takes the usages of one repository")
    if not isinstance(untagged_days, int) or untagged_days < 1:
        raise ValueError(f"untagged_days must be an integer >= 1, got {untagged_days!r}")

    courses: dict[str, _Course] = {}
    for u in usages:
        c = courses.setdefault(u.slug, _Course(u.slug))
        # Several CourseImages may name one course (other hubs): keep the most builds.
        c.keep = max(c.keep, u.keep)
        if u.tag is not None:
            c.tags.add(u.tag)
        elif u.digest:
            c.digest_only.add(u.digest)
    tags = sorted({t for c in courses.values() for t in c.tags})
    expire_untagged = not any(c.digest_only for c in courses.values())

    groups: tuple[str, ...] = ()
    policy = _render(courses, tags, groups, untagged_days, expire_untagged, describe=True)
    if len(policy_text(policy)) > max_chars:
        policy = _render(courses, tags, groups, untagged_days, expire_untagged, describe=False)
    if len(policy_text(policy)) > max_chars:
        groups = _choose_groups(courses, tags, untagged_days, expire_untagged, max_chars)
        policy = _render(courses, tags, groups, untagged_days, expire_untagged, describe=False)
    if len(policy_text(policy)) > max_chars:  # only with an absurdly small max_chars
        raise ValueError(f"no policy fits in {max_chars} characters")

    notes = []
    if groups:
        shown = ", ".join(g + "*" for g in groups[:8]) + (
            f" and {len(groups) - 8} more" if len(groups) > 8 else ""
        )
        notes.append(
            f"{len(courses)} courses outgrow ECR's {max_chars}-character policy limit: "
            f"every image under {shown} is kept"
        )
    if not expire_untagged:
        notes.append(
            "untagged images are not expired: a course uses an image by digest only "
            "and lifecycle rules can only select by tag"
        )
    else:
        notes.append(f"untagged images expire {untagged_days} days after push")
    return RepositoryPolicy(
        registry_host=usages[0].registry_host,
        repository=usages[0].repository,
        policy=policy,
        summaries=_summaries(courses, tags, groups, expire_untagged),
        groups=groups,
        notes=tuple(notes),
    )


# -- rules ---------------------------------------------------------------------------


def _covered(value: str, groups: Iterable[str]) -> str | None:
    for g in groups:
        if value.startswith(g):
            return g
    return None


def _keep_plan(courses: Mapping[str, _Course], tags: list[str], groups: tuple[str, ...]):
    """(course, countNumber, co-counted slugs) for every course with its own keep rule."""
    own = sorted((c for c in courses.values() if _covered(c.prefix, groups) is None), key=lambda c: c.prefix)
    own_prefixes = [c.prefix for c in own]
    keep_sums = [0]
    for c in own:
        keep_sums.append(keep_sums[-1] + c.keep)
    free_tags = sorted(t for t in tags if _covered(t, groups) is None)
    plan = []
    for i, c in enumerate(own):
        # ECR counts every image a rule's patterns match, including images that a
        # higher-priority rule (a nested course, a protected tag) already claims; make
        # room for those so this course still keeps `keep` of its own builds.
        hi = _prefix_end(own_prefixes, c.prefix)
        nested = own[i + 1 : hi]  # sorted order: strings starting with c.prefix follow it
        extra_tags = _prefix_end(free_tags, c.prefix) - bisect.bisect_left(free_tags, c.prefix)
        count = keep_sums[hi] - keep_sums[i] + extra_tags
        plan.append((c, count, [d.slug for d in nested]))
    # Longest prefix first: a nested course's rule outranks the course it nests in.
    plan.sort(key=lambda item: (-len(item[0].prefix), item[0].prefix))
    return plan


def _prefix_end(sorted_values: list[str], prefix: str) -> int:
    """Index after the last value of ``sorted_values`` that starts with ``prefix``."""
    return bisect.bisect_left(sorted_values, prefix + "\U0010ffff")


def _rule(priority: int, selection: dict[str, Any], description: str | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"rulePriority": priority, "selection": selection, "action": {"type": "expire"}}
    if description is not None:
        rule["description"] = description
    return rule


def _protect(pattern: str) -> dict[str, Any]:
    return {
        "tagStatus": "tagged",
        "tagPatternList": [pattern],
        "countType": "imageCountMoreThan",
        "countNumber": PROTECT_COUNT,
    }


def _keep(prefix: str, count: int) -> dict[str, Any]:
    return {
        "tagStatus": "tagged",
        "tagPatternList": [prefix + "*"],
        "countType": "imageCountMoreThan",
        "countNumber": count,
    }


def _untagged(days: int) -> dict[str, Any]:
    return {
        "tagStatus": "untagged",
        "countType": "sinceImagePushed",
        "countUnit": "days",
        "countNumber": days,
    }


def _render(courses, tags, groups, untagged_days, expire_untagged, *, describe: bool) -> dict[str, Any]:
    owners: dict[str, list[str]] = defaultdict(list)
    for c in courses.values():
        for t in c.tags:
            owners[t].append(c.slug)
    specs: list[tuple[dict[str, Any], str]] = []
    for t in tags:
        if _covered(t, groups) is None:
            specs.append((_protect(t), f"coursehub: protect {t} (used by {', '.join(sorted(owners[t]))})"))
    for g in groups:
        specs.append((_protect(g + "*"), f"coursehub: keep every image under {g}* (grouped to fit limits)"))
    for c, count, _nested in _keep_plan(courses, tags, groups):
        specs.append((_keep(c.prefix, count), f"coursehub: keep last {c.keep} builds of {c.slug}"))
    if expire_untagged:
        specs.append(
            (_untagged(untagged_days), f"coursehub: expire untagged images after {untagged_days} days")
        )
    return {
        "rules": [
            _rule(i, selection, text if describe else None)
            for i, (selection, text) in enumerate(specs, start=1)
        ]
    }


# -- grouping ------------------------------------------------------------------------


def _choose_groups(courses, tags, untagged_days, expire_untagged, max_chars) -> tuple[str, ...]:
    """Prefixes whose images are all kept, so that the policy fits ``max_chars``.

    Safe direction only: a group keeps more (every image under its prefix), never less.
    The alphabetically first K courses (closed over nesting, see ``_trimmed``) keep
    their own protect and keep rules; every other tag and build prefix is covered by
    the shortest prefix of it that is not a prefix of anything those K courses need,
    so groups are few and never reach into a trimmed course. K is the largest value
    whose policy fits (binary search; K = 0 leaves the single group ``*``).
    """
    order = sorted(courses.values(), key=lambda c: c.prefix)

    def groups_for(k: int) -> tuple[str, ...]:
        trimmed = _trimmed(order[:k], courses, tags)
        keep_out = sorted({c.prefix for c in trimmed} | _individual_tags(tags, trimmed))
        found: set[str] = set()
        for y in sorted(set(tags) | {c.prefix for c in courses.values()}):
            if y in keep_out:
                continue
            i = bisect.bisect_left(keep_out, y)
            near = [keep_out[j] for j in (i - 1, i) if 0 <= j < len(keep_out)]
            depth = max((len(_common_prefix(y, x)) for x in near), default=-1)
            if depth >= len(y):
                continue  # a tag that prefixes something kept out: its own protect rule
            found.add(y[: depth + 1])
        return tuple(sorted(g for g in found if _covered(g, found - {g}) is None))

    def fits(groups: tuple[str, ...]) -> bool:
        return _estimate(courses, tags, groups, untagged_days, expire_untagged) <= max_chars

    lo, hi = 0, len(order)  # invariant: groups_for(lo) fits, or lo == 0
    best = groups_for(0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = groups_for(mid)
        if fits(candidate):
            lo, best = mid, candidate
        else:
            hi = mid - 1
    return best


def _trimmed(seed: list[_Course], courses: Mapping[str, _Course], tags: list[str]) -> list[_Course]:
    """``seed`` plus every course that must keep its own rule alongside them.

    Nested courses (build prefix under a trimmed one) and outer courses (whose build
    prefix prefixes a trimmed course's prefix or tag) join: a group inside or around a
    trimmed course would otherwise be counted, unbounded, by a keep rule.
    """
    chosen = {c.slug for c in seed}
    while True:
        prefixes = {courses[s].prefix for s in chosen}
        needed = sorted(prefixes | _individual_tags(tags, [courses[s] for s in chosen]))
        grow = set()
        for c in courses.values():
            if c.slug in chosen:
                continue
            under = any(c.prefix[:n] in prefixes for n in range(1, len(c.prefix)))
            i = bisect.bisect_left(needed, c.prefix)
            around = i < len(needed) and needed[i].startswith(c.prefix)
            if under or around:
                grow.add(c.slug)
        if not grow:
            return [courses[s] for s in sorted(chosen)]
        chosen |= grow


def _individual_tags(tags: Iterable[str], trimmed: Iterable[_Course]) -> set[str]:
    trimmed = list(trimmed)
    own = {t for c in trimmed for t in c.tags}
    prefixes = {c.prefix for c in trimmed}
    return {t for t in tags if t in own or any(t[:n] in prefixes for n in range(1, len(t) + 1))}


def _estimate(courses, tags, groups, untagged_days, expire_untagged) -> int:
    return len(policy_text(_render(courses, tags, groups, untagged_days, expire_untagged, describe=False)))


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):  # the prefix ends with the shorter string
        if x != y:
            break
        n += 1
    return a[:n]


# -- summaries -----------------------------------------------------------------------


def _summaries(courses, tags, groups, expire_untagged) -> dict[str, str]:
    plan = {c.slug: count for c, count, _nested in _keep_plan(courses, tags, groups)}
    out = {}
    for slug in sorted(courses):
        c = courses[slug]
        parts = []
        if slug in plan:
            count = plan[slug]
            text = f"keeps {c.keep} builds of {slug}"
            if count != c.keep:
                text += (
                    f" (counts {count} under {c.prefix}* to make room for images of other courses sharing it)"
                )
            parts.append(text)
        else:
            g = _covered(c.prefix, groups)
            parts.append(f"keeps every build of {slug}: grouped under {g}* to fit ECR's policy limits")
        for t in sorted(c.tags):
            g = _covered(t, groups)
            parts.append(f"tag {t} protected" + (f" (by the {g}* group)" if g is not None else ""))
        for d in sorted(c.digest_only):
            parts.append(f"{d[:19]}… is used by digest only, so untagged images are not expired")
        out[slug] = "; ".join(parts)
    return out
