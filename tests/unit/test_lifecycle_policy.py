"""The pure lifecycle policy builder: ECR's documented rules, retention, grouping."""

from __future__ import annotations

import json
import random

import pytest
from ecr_policy_rules import Image, evaluate, run_to_fixpoint, violations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coursehub.desired.lifecycle import (
    MAX_POLICY_CHARS,
    PROTECT_COUNT,
    CourseUsage,
    build_lifecycle_policies,
    build_repository_policy,
    normalize_policy,
    policy_text,
)

HOST = "610119931565.dkr.ecr.us-east-1.amazonaws.com"
REPO = "ol-course-notebooks"

# Shaped like the production list: dots, underscores, digits, shared stems.
SLUGS = [
    "clustering_and_descriptive_ai",
    "deep_learning_foundations",
    "mitxt-6.3710.3x",
    "mitxt-6.3710.1x",
    "mitxt-6.86x",
    "mitxt-18.6501x",
    "mitxt-14.310x",
    "mitxt-6.419x",
    "uai_source-uai.0",
    "uai_source-uai.0a",
    "uai_source-uai.1",
    "uai_source-uai.1a",
    "uai_source-uai.2",
    "uai_source-uai.3",
    "uai_source-uai.4",
    "uai_source-uai.5",
    "uai_source-uai.6",
    "uai_source-uai.7",
    "uai_source-uai.8",
    "uai_source-uai.9",
    "uai_source-uai.10",
    "uai_source-uai.11",
    "uai_source-uai.12",
    "uai_source-uai.st1",
    "uai_source-uai.st2",
    "uai_source-uai.st3",
    "reinforcement_learning",
    "causal_inference_ml",
    "nlp_transformers",
    "computer_vision_cnn",
    "optimization_methods",
    "data_ethics_and_policy",
]
assert len(SLUGS) == 32 and len(set(SLUGS)) == 32


def usage(slug: str, *, tag: str | None = "", keep: int = 5, repo: str = REPO, digest: str | None = None):
    return CourseUsage(repo, HOST, slug if tag == "" else tag, digest, slug, keep)


def rules_by_kind(policy):
    kinds = {"protect": [], "keep": [], "untagged": []}
    for r in policy["rules"]:
        sel = r["selection"]
        if sel["tagStatus"] == "untagged":
            kinds["untagged"].append(r)
        elif sel["countNumber"] == PROTECT_COUNT:
            kinds["protect"].append(r)
        else:
            kinds["keep"].append(r)
    return kinds


def test_32_courses_one_rule_each_and_valid():
    result = build_lifecycle_policies([usage(s) for s in SLUGS])
    assert list(result) == [f"{HOST}/{REPO}"]
    rp = result[f"{HOST}/{REPO}"]
    assert violations(rp.policy) == []
    assert rp.groups == ()
    kinds = rules_by_kind(rp.policy)
    assert sorted(r["selection"]["tagPatternList"][0] for r in kinds["protect"]) == sorted(SLUGS)
    assert sorted(r["selection"]["tagPatternList"][0] for r in kinds["keep"]) == sorted(
        s + "-*" for s in SLUGS
    )
    assert all(r["selection"]["countNumber"] == 5 for r in kinds["keep"])
    [untagged] = kinds["untagged"]
    assert untagged["selection"] == {
        "tagStatus": "untagged",
        "countType": "sinceImagePushed",
        "countUnit": "days",
        "countNumber": 7,
    }
    priorities = [r["rulePriority"] for r in rp.policy["rules"]]
    assert priorities == list(range(1, 66))
    # Protection outranks every expiring rule.
    assert max(r["rulePriority"] for r in kinds["protect"]) < min(r["rulePriority"] for r in kinds["keep"])
    assert untagged["rulePriority"] == max(priorities)
    assert all("description" in r for r in rp.policy["rules"])
    assert (
        rp.summaries["uai_source-uai.1"]
        == "keeps 5 builds of uai_source-uai.1; tag uai_source-uai.1 protected"
    )


def test_output_is_deterministic_whatever_the_input_order():
    usages = [usage(s, keep=3 + i % 4) for i, s in enumerate(SLUGS)]
    first = build_lifecycle_policies(usages)
    for seed in range(5):
        shuffled = usages[:]
        random.Random(seed).shuffle(shuffled)
        again = build_lifecycle_policies(shuffled)
        assert {k: v.text for k, v in again.items()} == {k: v.text for k, v in first.items()}
        assert {k: dict(v.summaries) for k, v in again.items()} == {
            k: dict(v.summaries) for k, v in first.items()
        }


def test_untagged_days_and_keep_are_used():
    rp = build_repository_policy([usage("a_course", keep=12)], untagged_days=30)
    kinds = rules_by_kind(rp.policy)
    assert kinds["keep"][0]["selection"]["countNumber"] == 12
    assert kinds["untagged"][0]["selection"]["countNumber"] == 30
    assert "untagged images expire 30 days after push" in rp.notes


def test_one_repository_per_host_and_name():
    usages = [
        usage("a_course"),
        usage("b_course", repo="other"),
        CourseUsage(REPO, "999999999999.dkr.ecr.eu-west-1.amazonaws.com", "c", None, "c"),
    ]
    result = build_lifecycle_policies(usages)
    assert sorted(result) == sorted(
        [f"{HOST}/{REPO}", f"{HOST}/other", f"999999999999.dkr.ecr.eu-west-1.amazonaws.com/{REPO}"]
    )
    assert result[f"{HOST}/other"].summaries.keys() == {"b_course"}


def test_same_course_in_two_hubs_keeps_the_larger_count_and_both_tags():
    rp = build_repository_policy(
        [usage("uai_source-uai.1", keep=3), usage("uai_source-uai.1", tag="uai_source-uai.1-rc2", keep=8)]
    )
    kinds = rules_by_kind(rp.policy)
    protected = sorted(r["selection"]["tagPatternList"][0] for r in kinds["protect"])
    assert protected == ["uai_source-uai.1", "uai_source-uai.1-rc2"]
    # The pinned build tag sits under the course's own prefix: one more slot for it.
    assert kinds["keep"][0]["selection"]["countNumber"] == 9
    assert violations(rp.policy) == []


def test_digest_only_use_turns_untagged_expiry_off():
    digest = "sha256:" + "ab" * 32
    rp = build_repository_policy([usage("a_course"), usage("b_course", tag=None, digest=digest)])
    assert rules_by_kind(rp.policy)["untagged"] == []
    assert violations(rp.policy) == []
    assert "by digest only" in rp.summaries["b_course"]
    assert any("not expired" in n for n in rp.notes)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep": 0},
        {"keep": -1},
        {"slug": "bad*slug"},
        {"slug": ""},
        {"tag": "bad*tag"},
        {"tag": None, "digest": None},
    ],
)
def test_usage_refuses_values_that_would_corrupt_patterns(kwargs):
    base = {"repository": REPO, "registry_host": HOST, "tag": "t", "digest": None, "slug": "s", "keep": 5}
    base.update(kwargs)
    with pytest.raises(ValueError):
        CourseUsage(**base)


def test_normalize_ignores_rule_order_key_order_and_list_order():
    rp = build_repository_policy([usage(s) for s in SLUGS[:5]])
    shuffled = json.loads(json.dumps(rp.policy))
    shuffled["rules"].reverse()
    assert normalize_policy(shuffled) == normalize_policy(rp.policy)
    assert normalize_policy(json.loads(rp.text)) == normalize_policy(rp.policy)
    changed = json.loads(rp.text)
    changed["rules"][0]["selection"]["countNumber"] += 1
    assert normalize_policy(changed) != normalize_policy(rp.policy)


# -- retention, simulated the way ECR documents evaluation ---------------------------


def history(slug_builds: dict[str, int], current: dict[str, int] | None = None, seed: int = 0) -> list[Image]:
    """Builds ``<slug>-b<i>`` pushed in a shuffled interleaving; ``current[slug]`` = index of
    the build that also carries the course tag (default: the newest)."""
    rng = random.Random(seed)
    order = [(slug, i) for slug, n in slug_builds.items() for i in range(n)]
    # Keep each course's builds in order, interleave courses at random.
    rng.shuffle(order)
    per_course_seen: dict[str, int] = {}
    images = []
    for t, (slug, _) in enumerate(order):
        i = per_course_seen.get(slug, 0)
        per_course_seen[slug] = i + 1
        tags = {f"{slug}-b{i}"}
        pick = (current or {}).get(slug, slug_builds[slug] - 1)
        if i == pick:
            tags.add(slug)
        images.append(Image(f"{slug}@{i}", t, frozenset(tags)))
    return images


def surviving_builds(images, slug):
    own = (i.digest.split("@")[1] for i in images if i.digest.startswith(slug + "@"))
    return sorted(int(n) for n in own if n.isdigit())


def test_prefix_neighbours_do_not_eat_each_others_builds():
    # uai_source-uai.1-* must not select uai_source-uai.1a-*; a busy course must not
    # push its neighbour out.
    slugs = ["uai_source-uai.1", "uai_source-uai.1a", "uai_source-uai.10"]
    rp = build_repository_policy([usage(s) for s in slugs])
    images = history({"uai_source-uai.1": 40, "uai_source-uai.1a": 7, "uai_source-uai.10": 3})
    survivors, _ = run_to_fixpoint(rp.policy, images, now=10**6)
    assert surviving_builds(survivors, "uai_source-uai.1") == [35, 36, 37, 38, 39]
    assert surviving_builds(survivors, "uai_source-uai.1a") == [2, 3, 4, 5, 6]
    assert surviving_builds(survivors, "uai_source-uai.10") == [0, 1, 2]


def test_current_tag_is_protected_even_when_it_is_an_old_build():
    rp = build_repository_policy([usage("mitxt-6.3710.3x", keep=2)])
    images = history({"mitxt-6.3710.3x": 10}, current={"mitxt-6.3710.3x": 1})
    survivors, _ = run_to_fixpoint(rp.policy, images, now=10**6)
    assert surviving_builds(survivors, "mitxt-6.3710.3x") == [1, 8, 9]


def test_nested_course_prefix_is_judged_by_its_own_rule():
    # "uai_source-" is a prefix of every tag of "uai_source-uai.1": the inner rule is
    # ranked first so its builds are never expired by the outer rule, and the outer
    # count makes room for the inner course's kept builds and protected tag.
    rp = build_repository_policy([usage("uai_source", keep=3), usage("uai_source-uai.1", keep=4)])
    assert violations(rp.policy) == []
    keep_rules = rules_by_kind(rp.policy)["keep"]
    assert [r["selection"]["tagPatternList"][0] for r in keep_rules] == ["uai_source-uai.1-*", "uai_source-*"]
    assert [r["selection"]["countNumber"] for r in keep_rules] == [4, 3 + 4 + 1]
    assert "make room" in rp.summaries["uai_source"]
    # Steady state: the inner course has no backlog beyond its keep.
    images = history({"uai_source": 12, "uai_source-uai.1": 4}, seed=3)
    survivors, expired = run_to_fixpoint(rp.policy, images, now=10**6)
    kept = surviving_builds(survivors, "uai_source")
    # At least its own 3 newest; at most the whole count (the room may go unused).
    assert {9, 10, 11} <= set(kept) and len(kept) <= 8 and kept == list(range(12 - len(kept), 12))
    assert surviving_builds(survivors, "uai_source-uai.1") == [0, 1, 2, 3]
    # With a backlog the inner rule trims the inner course; the outer rule never does.
    images = history({"uai_source": 12, "uai_source-uai.1": 30}, seed=4)
    _, expired = run_to_fixpoint(rp.policy, images, now=10**6)
    outer_rule = keep_rules[1]["rulePriority"]
    assert not [d for d, prio in expired.items() if d.startswith("uai_source-uai.1@") and prio == outer_rule]


def test_untagged_images_expire_after_the_configured_days():
    rp = build_repository_policy([usage("a_course")], untagged_days=7)
    day = 86400
    images = [
        Image("old", 0, frozenset()),
        Image("new", 5 * day, frozenset()),
        Image("cur", 0, frozenset({"a_course"})),
    ]
    assert set(evaluate(rp.policy, images, now=8 * day)) == {"old"}


# -- limits and grouping --------------------------------------------------------------


def many_slugs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    stems = [
        "uai_source-uai",
        "mitxt-6",
        "mitxt-18",
        "clustering_and_descriptive_ai",
        "ml",
        "data_science",
        "nlp",
    ]
    out = set()
    while len(out) < n:
        stem = rng.choice(stems)
        out.add(f"{stem}.{rng.randrange(10000)}{rng.choice(['', 'a', 'x', '.3x', '_st'])}")
    return sorted(out)


def test_2000_courses_in_one_repository_are_grouped_to_fit():
    slugs = many_slugs(2000)
    rp = build_repository_policy([usage(s) for s in slugs])
    assert violations(rp.policy) == []
    assert len(rp.text) <= MAX_POLICY_CHARS
    assert rp.groups and any("outgrow" in n for n in rp.notes)
    assert set(rp.summaries) == set(slugs)
    grouped = [s for s in slugs if "grouped under" in rp.summaries[s]]
    trimmed = [s for s in slugs if s not in grouped]
    assert trimmed, "the policy should still trim some courses individually"
    # Every course's tag stays protected, by its own rule or by a group.
    # (Pattern and count from the same rule: untagged rules have no pattern.)
    tagged = [r["selection"] for r in rp.policy["rules"] if r["selection"]["tagStatus"] == "tagged"]
    protect = [sel["tagPatternList"][0] for sel in tagged if sel["countNumber"] == PROTECT_COUNT]
    for s in slugs:
        assert s in protect or any(p.endswith("*") and s.startswith(p[:-1]) for p in protect), s
    # Deterministic.
    assert build_repository_policy([usage(s) for s in reversed(slugs)]).text == rp.text


def test_2000_courses_over_many_repositories_need_no_grouping():
    slugs = many_slugs(2000, seed=1)
    result = build_lifecycle_policies([usage(s, repo=f"courses-{i % 40}") for i, s in enumerate(slugs)])
    assert len(result) == 40
    for rp in result.values():
        assert violations(rp.policy) == []
        assert rp.groups == ()


def test_grouping_keeps_protection_and_trims_the_rest_correctly():
    rp = build_repository_policy([usage(s, keep=2) for s in SLUGS], max_chars=4000)
    assert (
        violations(
            rp.policy,
        )
        == []
        and len(rp.text) <= 4000
    )
    assert rp.groups
    images = history({s: 6 for s in SLUGS}, current={s: 0 for s in SLUGS}, seed=9)
    survivors, _ = run_to_fixpoint(rp.policy, images, now=10**6)
    for s in SLUGS:
        kept = surviving_builds(survivors, s)
        assert 0 in kept, f"current build of {s} expired"
        if "grouped under" in rp.summaries[s]:
            assert kept == list(range(6))
        else:
            assert kept == [0, 4, 5]


def test_descriptions_are_dropped_before_grouping():
    slugs = many_slugs(100, seed=2)
    full = build_repository_policy([usage(s) for s in slugs], max_chars=10**9)
    assert len(full.text) > MAX_POLICY_CHARS
    rp = build_repository_policy([usage(s) for s in slugs])
    assert violations(rp.policy) == []
    assert all("description" not in r for r in rp.policy["rules"])


# -- properties -----------------------------------------------------------------------

PARTS = ["uai", "uai_source", "mitxt", "6.3710", "3x", "1", "1a", "st1", "0a", "ai"]
slug_st = st.builds(
    # Two separators for at most two joins: a shorter slug leaves one unused.
    lambda parts, seps: parts[0] + "".join(sep + p for sep, p in zip(seps, parts[1:], strict=False)),
    st.lists(st.sampled_from(PARTS), min_size=1, max_size=3),
    st.lists(st.sampled_from(["-", ".", "_"]), min_size=2, max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_policy_is_valid_protects_in_use_tags_and_keeps_builds(data):
    slugs = sorted(data.draw(st.sets(slug_st, min_size=1, max_size=12)))
    keeps = {s: data.draw(st.integers(1, 6)) for s in slugs}
    max_chars = data.draw(st.sampled_from([MAX_POLICY_CHARS, 2500, 1200]))
    rp = build_repository_policy([usage(s, keep=keeps[s]) for s in slugs], max_chars=max_chars)
    assert violations(rp.policy) == []
    assert len(rp.text) <= max_chars

    def nested(s):  # its build prefix sits under another course's build prefix
        return any(o != s and s.startswith(o + "-") for o in slugs)

    # Courses nested in another have no backlog beyond their keep (steady state).
    builds = {s: data.draw(st.integers(0, keeps[s] if nested(s) else 12)) for s in slugs}
    current = {s: data.draw(st.integers(0, max(builds[s] - 1, 0))) for s in slugs}
    images = history({s: n for s, n in builds.items() if n}, current, seed=data.draw(st.integers(0, 99)))
    # A course with no build yet still has its tagged image.
    images += [Image(f"{s}@cur", -1, frozenset({s})) for s in slugs if builds[s] == 0]
    survivors, expired = run_to_fixpoint(rp.policy, images, now=10**6)

    alive = {i.digest for i in survivors}
    for image in images:
        if image.tags & set(slugs):
            assert image.digest in alive, f"in-use image {image.tags} expired"
    keep_patterns = {
        r["rulePriority"]: r["selection"]["tagPatternList"][0]
        for r in rp.policy["rules"]
        if r["selection"]["tagStatus"] == "tagged"
    }
    for digest, prio in expired.items():
        owner = digest.split("@")[0]
        # The rule that expired it is the course's own keep rule.
        assert keep_patterns[prio] == owner + "-*", (digest, keep_patterns[prio])
    for s in slugs:
        if "grouped under" in rp.summaries[s]:
            assert len(surviving_builds(survivors, s)) == builds[s]
        else:
            kept = surviving_builds(survivors, s)
            newest = list(range(builds[s]))[-keeps[s] :]
            assert set(newest) <= set(kept), (s, kept, newest)


def test_policy_text_is_compact_and_sorted():
    rp = build_repository_policy([usage("a_course")])
    assert rp.text == policy_text(rp.policy) == json.dumps(rp.policy, sort_keys=True, separators=(",", ":"))
    assert json.loads(rp.text) == rp.policy


# -- the validator itself must catch what AWS refuses ----------------------------------


def _ok_rules():
    return build_repository_policy([usage("a_course"), usage("b_course")]).policy


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda p: p["rules"][1].__setitem__("rulePriority", 1), "not unique"),
        (
            lambda p: (
                p["rules"][0]["selection"].__setitem__("tagStatus", "any")
                or p["rules"][0]["selection"].pop("tagPatternList")
            ),
            "highest rulePriority",
        ),
        (lambda p: p["rules"][0]["selection"].__setitem__("tagPatternList", ["a*b*c*d*e*f"]), "wildcards"),
        (lambda p: p["rules"][0]["selection"].pop("tagPatternList"), "exactly one of"),
        (lambda p: p["rules"][0]["selection"].__setitem__("tagPrefixList", ["a"]), "exactly one of"),
        (lambda p: p["rules"][-1]["selection"].__setitem__("tagPatternList", ["x"]), "must omit"),
        (lambda p: p["rules"][0]["selection"].__setitem__("countNumber", 0), "countNumber"),
        (lambda p: p["rules"][-1]["selection"].pop("countUnit"), "countUnit 'days'"),
        (lambda p: p["rules"][0]["selection"].__setitem__("countUnit", "days"), "must not have countUnit"),
        (lambda p: p["rules"][0].__setitem__("action", {"type": "delete"}), "action"),
        (
            lambda p: p["rules"].append(json.loads(json.dumps(p["rules"][-1])) | {"rulePriority": 99}),
            "only one rule may select untagged",
        ),
        (
            lambda p: p["rules"][1]["selection"].__setitem__(
                "tagPatternList", p["rules"][0]["selection"]["tagPatternList"]
            ),
            "same tag list",
        ),
        (lambda p: p["rules"][0].__setitem__("description", "x" * 31000), "characters"),
        (lambda p: p["rules"][0]["selection"].__setitem__("tagPatternList", ["a b"]), "no tag can hold"),
    ],
)
def test_validator_catches_each_documented_rule(mutate, expected):
    policy = _ok_rules()
    assert violations(policy) == []
    mutate(policy)
    found = violations(policy)
    assert any(expected in v for v in found), found
