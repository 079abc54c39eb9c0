"""Lifecycle policies applied to moto's ECR server over HTTP (a real HTTP API, no mocks)."""

from __future__ import annotations

import itertools
import json

import pytest

from coursehub.desired.lifecycle import CourseUsage, build_lifecycle_policies, normalize_policy
from coursehub.registry.ecr_lifecycle import RepositorySettings, apply_lifecycle_policies, parse_ecr_host
from coursehub_dev.waiting import free_port
from fixtures.ecr import ECR_HOST, create_repository, ecr_client, put_image, start_moto

# Small budgets so failures are quick; these are not timing assertions.
FAST = {"max_attempts": 3, "connect_timeout": 1, "read_timeout": 5}
_names = itertools.count()


def new_repo(endpoint: str) -> str:
    name = f"courses-{next(_names)}"
    create_repository(endpoint, name)
    return name


def desired(repo: str, slugs: list[str], keep: int = 5):
    return build_lifecycle_policies([CourseUsage(repo, ECR_HOST, s, None, s, keep) for s in slugs])


def remote_policy(endpoint: str, repo: str) -> dict:
    return json.loads(ecr_client(endpoint).get_lifecycle_policy(repositoryName=repo)["lifecyclePolicyText"])


def test_parse_ecr_host():
    assert parse_ecr_host("610119931565.dkr.ecr.us-east-1.amazonaws.com") == ("610119931565", "us-east-1")
    assert parse_ecr_host("610119931565.dkr.ecr-fips.us-gov-west-1.amazonaws.com") == (
        "610119931565",
        "us-gov-west-1",
    )
    assert parse_ecr_host("610119931565.dkr.ecr.cn-north-1.amazonaws.com.cn") == (
        "610119931565",
        "cn-north-1",
    )
    for host in (
        "docker.io",
        "ghcr.io",
        "localhost:5000",
        "61011993156.dkr.ecr.us-east-1.amazonaws.com",
        "public.ecr.aws",
    ):
        assert parse_ecr_host(host) is None


def test_policy_appears_changes_and_is_not_reput(ecr_proxy):
    endpoint = ecr_proxy.url
    repo = new_repo(endpoint)
    put_image(endpoint, repo, "uai_source-uai.1")
    key = f"{ECR_HOST}/{repo}"

    first = desired(repo, ["uai_source-uai.1", "mitxt-6.3710.3x"])
    result = apply_lifecycle_policies(first, endpoint_url=endpoint, **FAST)[key]
    assert (result.ok, result.reason, result.changed) == (True, "Applied", True)
    assert normalize_policy(remote_policy(endpoint, repo)) == normalize_policy(first[key].policy)

    ecr_proxy.clear()
    again = apply_lifecycle_policies(
        desired(repo, ["mitxt-6.3710.3x", "uai_source-uai.1"]), endpoint_url=endpoint, **FAST
    )[key]
    assert (again.ok, again.reason, again.changed) == (True, "Unchanged", False)
    assert ecr_proxy.counts == {"GetLifecyclePolicy": 1}

    # A course is added: the policy follows.
    ecr_proxy.clear()
    added = desired(repo, ["uai_source-uai.1", "mitxt-6.3710.3x", "uai_source-uai.1a"])
    assert apply_lifecycle_policies(added, endpoint_url=endpoint, **FAST)[key].reason == "Applied"
    assert ecr_proxy.counts == {"GetLifecyclePolicy": 1, "PutLifecyclePolicy": 1}
    patterns = [r["selection"].get("tagPatternList") for r in remote_policy(endpoint, repo)["rules"]]
    assert ["uai_source-uai.1a"] in patterns and ["uai_source-uai.1a-*"] in patterns

    # A course is removed: its rules go.
    removed = desired(repo, ["uai_source-uai.1a"])
    assert apply_lifecycle_policies(removed, endpoint_url=endpoint, **FAST)[key].reason == "Applied"
    patterns = [r["selection"].get("tagPatternList") for r in remote_policy(endpoint, repo)["rules"]]
    assert ["mitxt-6.3710.3x"] not in patterns and ["uai_source-uai.1-*"] not in patterns


def test_equal_policy_written_differently_is_not_reput(ecr_proxy):
    endpoint = ecr_proxy.url
    repo = new_repo(endpoint)
    key = f"{ECR_HOST}/{repo}"
    want = desired(repo, ["a_course", "b_course"])
    # Someone put the same policy with other spacing, key order and rule order.
    doc = json.loads(want[key].text)
    doc["rules"].reverse()
    ecr_client(endpoint).put_lifecycle_policy(
        repositoryName=repo, lifecyclePolicyText=json.dumps(doc, indent=2)
    )
    ecr_proxy.clear()
    assert apply_lifecycle_policies(want, endpoint_url=endpoint, **FAST)[key].reason == "Unchanged"
    assert "PutLifecyclePolicy" not in ecr_proxy.counts


def test_tuple_form_and_endpoint_from_environment(ecr_endpoint, monkeypatch):
    repo = new_repo(ecr_endpoint)
    policy = next(iter(desired(repo, ["a_course"]).values())).policy
    monkeypatch.setenv("COURSEHUB_AWS_ENDPOINT_URL", ecr_endpoint)
    result = apply_lifecycle_policies({repo: ("us-east-1", policy)}, **FAST)[repo]
    assert (result.ok, result.reason) == (True, "Applied")
    assert normalize_policy(remote_policy(ecr_endpoint, repo)) == normalize_policy(policy)


def test_missing_repository_is_reported(ecr_endpoint):
    want = desired("no-such-repo", ["a_course"])
    [result] = apply_lifecycle_policies(want, endpoint_url=ecr_endpoint, **FAST).values()
    assert (result.ok, result.reason) == (False, "RepositoryNotFound")
    assert "no-such-repo" in result.message and "does not exist" in result.message


def test_missing_repository_is_created_when_enabled(ecr_endpoint):
    want = desired("created-by-operator", ["a_course"])
    settings = RepositorySettings(scan_on_push=True, tag_mutability="MUTABLE", encryption_type="AES256")
    [result] = apply_lifecycle_policies(
        want, endpoint_url=ecr_endpoint, create_missing=settings, **FAST
    ).values()
    assert (result.ok, result.reason, result.created, result.changed) == (True, "Applied", True, True)
    [repo] = ecr_client(ecr_endpoint).describe_repositories(repositoryNames=["created-by-operator"])[
        "repositories"
    ]
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo["imageTagMutability"] == "MUTABLE"
    assert repo["encryptionConfiguration"]["encryptionType"] == "AES256"
    assert remote_policy(ecr_endpoint, "created-by-operator")["rules"]


def test_one_failure_does_not_stop_the_others(ecr_endpoint):
    good = new_repo(ecr_endpoint)
    want = desired(good, ["a_course"]) | desired("missing-one", ["b_course"])
    results = apply_lifecycle_policies(want, endpoint_url=ecr_endpoint, **FAST)
    assert {r.reason for r in results.values()} == {"Applied", "RepositoryNotFound"}


def test_stopped_server_is_endpoint_unreachable(aws_fake_credentials):
    server, url = start_moto()
    server.stop()
    [result] = apply_lifecycle_policies(desired("courses", ["a_course"]), endpoint_url=url, **FAST).values()
    assert (result.ok, result.reason) == (False, "EndpointUnreachable")
    assert url in result.message


def test_nothing_listening_is_endpoint_unreachable(aws_fake_credentials):
    url = f"http://127.0.0.1:{free_port()}"
    [result] = apply_lifecycle_policies(desired("courses", ["a_course"]), endpoint_url=url, **FAST).values()
    assert result.reason == "EndpointUnreachable"


def test_standard_retries_get_through_transient_throttling(ecr_proxy):
    endpoint = ecr_proxy.url
    repo = new_repo(endpoint)
    ecr_proxy.clear()
    ecr_proxy.fail("GetLifecyclePolicy", "ThrottlingException", times=2)
    [result] = apply_lifecycle_policies(desired(repo, ["a_course"]), endpoint_url=endpoint, **FAST).values()
    assert (result.ok, result.reason) == (True, "Applied")
    assert ecr_proxy.counts["GetLifecyclePolicy"] == 3  # two throttled, one through
    assert ecr_proxy.forwarded["GetLifecyclePolicy"] == 1


def test_persistent_throttling_becomes_throttled(ecr_proxy):
    endpoint = ecr_proxy.url
    repo = new_repo(endpoint)
    ecr_proxy.clear()
    ecr_proxy.fail("PutLifecyclePolicy", "ThrottlingException")
    [result] = apply_lifecycle_policies(desired(repo, ["a_course"]), endpoint_url=endpoint, **FAST).values()
    assert (result.ok, result.reason) == (False, "Throttled")
    assert "PutLifecyclePolicy" in result.message
    assert ecr_proxy.counts["PutLifecyclePolicy"] == FAST["max_attempts"]


@pytest.mark.parametrize("code", ["AccessDeniedException", "UnrecognizedClientException"])
def test_access_denied(ecr_proxy, code):
    endpoint = ecr_proxy.url
    repo = new_repo(endpoint)
    ecr_proxy.fail("GetLifecyclePolicy", code)
    [result] = apply_lifecycle_policies(desired(repo, ["a_course"]), endpoint_url=endpoint, **FAST).values()
    assert (result.ok, result.reason) == (False, "AccessDenied")
    assert "ecr:GetLifecyclePolicy" in result.message


def test_rejected_policy_is_registry_error(ecr_endpoint):
    repo = new_repo(ecr_endpoint)
    bad = {
        "rules": [
            {
                "rulePriority": 1,
                "selection": {"tagStatus": "untagged", "countType": "imageCountMoreThan", "countNumber": 0},
                "action": {"type": "expire"},
            }
        ]
    }
    result = apply_lifecycle_policies({repo: ("us-east-1", bad)}, endpoint_url=ecr_endpoint, **FAST)[repo]
    assert (result.ok, result.reason) == (False, "RegistryError")
    assert "InvalidParameterException" in result.message


def test_non_ecr_host_is_refused_without_calls(ecr_proxy):
    want = build_lifecycle_policies([CourseUsage("lib/img", "ghcr.io", "a", None, "a")])
    [result] = apply_lifecycle_policies(want, endpoint_url=ecr_proxy.url, **FAST).values()
    assert (result.ok, result.reason) == (False, "RegistryError")
    assert not ecr_proxy.counts
