"""What AWS documents about ECR lifecycle policies, as checks, plus an evaluator.

Sources: "Lifecycle policy properties in Amazon ECR", "How lifecycle policies work"
(ECR user guide), the service quota "Lifecycle policy length" (30,720 characters) and
botocore's ``LifecyclePolicyText`` shape (min 100, max 30720).

``violations(policy)`` lists every broken rule (empty = valid). ``evaluate`` applies a
policy to a set of images the way the documentation describes, pessimistically: a rule
counts every image its selection matches, even those a higher rule already claims.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass

MAX_CHARS = 30_720
MIN_CHARS = 100
MAX_WILDCARDS = 4
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

_RULE_KEYS = {"rulePriority", "description", "selection", "action"}
_SELECTION_KEYS = {"tagStatus", "tagPatternList", "tagPrefixList", "countType", "countUnit", "countNumber"}


def text_of(policy: dict) -> str:
    return json.dumps(policy, sort_keys=True, separators=(",", ":"))


def violations(policy: dict, text: str | None = None) -> list[str]:
    out: list[str] = []
    text = text_of(policy) if text is None else text
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        out.append(f"policy text is {len(text)} characters, allowed {MIN_CHARS}..{MAX_CHARS}")
    if set(policy) != {"rules"}:
        out.append(f"top-level keys {sorted(policy)} != ['rules']")
    rules = policy.get("rules")
    if not isinstance(rules, list) or not rules:
        return [*out, "rules must be a non-empty list"]
    priorities = []
    selections_seen = []
    untagged_rules = 0
    for i, rule in enumerate(rules):
        where = f"rule[{i}]"
        if not isinstance(rule, dict):
            out.append(f"{where} is not an object")
            continue
        missing = {"rulePriority", "selection", "action"} - set(rule)
        if missing:
            out.append(f"{where} lacks {sorted(missing)}")
        if set(rule) - _RULE_KEYS:
            out.append(f"{where} has unknown keys {sorted(set(rule) - _RULE_KEYS)}")
        prio = rule.get("rulePriority")
        if not isinstance(prio, int) or isinstance(prio, bool) or prio < 1:
            out.append(f"{where} rulePriority {prio!r} is not a positive integer")
        priorities.append(prio)
        if "description" in rule and not isinstance(rule["description"], str):
            out.append(f"{where} description is not a string")
        if rule.get("action") != {"type": "expire"}:
            out.append(f"{where} action {rule.get('action')!r} is not {{'type': 'expire'}}")
        sel = rule.get("selection", {})
        if set(sel) - _SELECTION_KEYS:
            out.append(f"{where} selection has unknown keys {sorted(set(sel) - _SELECTION_KEYS)}")
        status = sel.get("tagStatus")
        patterns, prefixes = sel.get("tagPatternList"), sel.get("tagPrefixList")
        if status not in ("tagged", "untagged", "any"):
            out.append(f"{where} tagStatus {status!r} invalid")
        if status == "tagged":
            if (patterns is None) == (prefixes is None):
                out.append(f"{where} tagged needs exactly one of tagPatternList / tagPrefixList")
            for lst, name in ((patterns, "tagPatternList"), (prefixes, "tagPrefixList")):
                if lst is None:
                    continue
                if not isinstance(lst, list) or not lst or not all(isinstance(p, str) and p for p in lst):
                    out.append(f"{where} {name} must be a non-empty list of non-empty strings")
                    continue
                if name == "tagPatternList":
                    for p in lst:
                        if p.count("*") > MAX_WILDCARDS:
                            out.append(f"{where} pattern {p!r} has more than {MAX_WILDCARDS} wildcards")
                        if not re.fullmatch(r"[A-Za-z0-9_.*-]+", p):
                            out.append(f"{where} pattern {p!r} has characters no tag can hold")
                elif any("*" in p for p in lst):
                    out.append(f"{where} tagPrefixList entries cannot hold wildcards")
            selections_seen.append((tuple(sorted(patterns or [])), tuple(sorted(prefixes or []))))
        elif patterns is not None or prefixes is not None:
            out.append(f"{where} {status} must omit tagPatternList and tagPrefixList")
        if status == "untagged":
            untagged_rules += 1
        count_type, unit, number = sel.get("countType"), sel.get("countUnit"), sel.get("countNumber")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            out.append(f"{where} countNumber {number!r} is not an integer >= 1")
        if count_type == "imageCountMoreThan":
            if unit is not None:
                out.append(f"{where} imageCountMoreThan must not have countUnit")
        elif count_type == "sinceImagePushed":
            if unit != "days":
                out.append(f"{where} sinceImagePushed needs countUnit 'days'")
        else:
            out.append(f"{where} countType {count_type!r} invalid")
    if len(set(priorities)) != len(priorities):
        out.append("rulePriority values are not unique")
    ints = [p for p in priorities if isinstance(p, int)]
    for rule in rules:
        is_any = isinstance(rule, dict) and rule.get("selection", {}).get("tagStatus") == "any"
        if is_any and rule.get("rulePriority") != max(ints):
            out.append("a tagStatus 'any' rule must have the highest rulePriority")
    if untagged_rules > 1:
        out.append("only one rule may select untagged images")
    if len(set(selections_seen)) != len(selections_seen):
        out.append("two tagged rules select the same tag list")
    return out


@dataclass(frozen=True)
class Image:
    digest: str
    pushed: int  # seconds, larger is newer
    tags: frozenset[str]


def _selects(sel: dict, image: Image) -> bool:
    status = sel["tagStatus"]
    if status == "any":
        return True
    if status == "untagged":
        return not image.tags
    if not image.tags:
        return False
    # Every entry must match some tag of the image (the list is an AND).
    patterns = all(any(fnmatch.fnmatchcase(t, p) for t in image.tags) for p in sel.get("tagPatternList", []))
    return patterns and all(any(t.startswith(p) for t in image.tags) for p in sel.get("tagPrefixList", []))


def evaluate(policy: dict, images: list[Image], now: int) -> dict[str, int]:
    """Images the policy expires now: ``{digest: rulePriority that expired it}``."""
    rules = sorted(policy["rules"], key=lambda r: r["rulePriority"])
    marked: dict[int, set[str]] = {}
    for rule in rules:
        sel = rule["selection"]
        chosen = sorted((i for i in images if _selects(sel, i)), key=lambda i: (-i.pushed, i.digest))
        if sel["countType"] == "imageCountMoreThan":
            marked[rule["rulePriority"]] = {i.digest for i in chosen[sel["countNumber"] :]}
        else:
            marked[rule["rulePriority"]] = {
                i.digest for i in chosen if now - i.pushed > sel["countNumber"] * 86400
            }
    out = {}
    for image in images:
        # The first rule whose selection matches decides; lower rules cannot expire it.
        for rule in rules:
            if _selects(rule["selection"], image):
                if image.digest in marked[rule["rulePriority"]]:
                    out[image.digest] = rule["rulePriority"]
                break
    return out


def run_to_fixpoint(
    policy: dict, images: list[Image], now: int, rounds: int = 50
) -> tuple[list[Image], dict[str, int]]:
    """Apply daily runs until nothing more expires: (survivors, everything expired)."""
    expired_all: dict[str, int] = {}
    for _ in range(rounds):
        expired = evaluate(policy, images, now)
        if not expired:
            return images, expired_all
        expired_all.update(expired)
        images = [i for i in images if i.digest not in expired]
    raise AssertionError("policy did not settle")
