"""desired/build.py: which builds run, the build Job, results, masking, Built and status.build."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from coursehub.api.courseimage import CourseImageSpec, CourseImageStatus
from coursehub.conditions import Cond
from coursehub.desired import build as b
from coursehub.desired.courses import CourseRecord

C1 = "1" * 40
C2 = "2" * 40
C3 = "3" * 40


def course(**build) -> CourseRecord:
    spec = {
        "course": "uai_source-uai.1",
        "image": "registry.example.edu/courses:uai_source-uai.1",
        "build": {"git": {"url": "https://git.example.edu/c/uai.git"}, **build},
    }
    return CourseRecord(
        "learn", "uai-1", "uid-1", "2026-01-01T00:00:00Z", 1, (), CourseImageSpec.model_validate(spec)
    )


OPTS = b.BuildOptions(image="registry.local/coursehub/buildah:1")


# -- spec ------------------------------------------------------------------------------------
def test_spec_defaults():
    s = course().spec.build
    assert s is not None
    assert (s.dockerfile, s.poll_seconds, s.git.ref, s.git.path) == ("Dockerfile", 120, "main", None)


def test_a_digest_with_a_build_is_refused_naming_the_field_and_fix():
    with pytest.raises(ValidationError, match=r"spec.image: with spec.build .* remove '@sha256"):
        CourseImageSpec.model_validate(
            {
                "course": "a",
                "image": "r.example/x@sha256:" + "a" * 64,
                "build": {"git": {"url": "https://g.example/x"}},
            }
        )


def test_a_token_over_plain_http_is_refused():
    with pytest.raises(ValidationError, match="never sent over plain http"):
        course(git={"url": "http://git.example.edu/x.git", "secretRef": {"name": "tok"}})
    course(git={"url": "http://git.example.edu/x.git"})  # public: fine


@pytest.mark.parametrize("url", ["file:///etc", "/srv/git/x", "git@github.com:x/y.git", "ext::sh -c id"])
def test_local_and_odd_git_urls_are_refused(url):
    with pytest.raises(ValidationError, match="url"):
        course(git={"url": url})


@pytest.mark.parametrize(
    "field", [{"dockerfile": "../Dockerfile"}, {"git": {"url": "https://g.example/x", "path": "a/../.."}}]
)
def test_dotdot_paths_are_refused(field):
    with pytest.raises(ValidationError, match=r"\.\."):
        course(**field)


def test_crd_carries_the_same_rules():
    from coursehub.crds import course_image_crd

    text = json.dumps(course_image_crd())
    for message in (
        "remove '@sha256:...'",
        "never sent over plain http",
        "spec.build.dockerfile must not contain",
    ):
        assert message in text


# -- which builds run ------------------------------------------------------------------------
K1, K2, K3 = ("ns", "a"), ("ns", "b"), ("ns", "c")


def test_a_newer_commit_supersedes_the_queued_one_keeping_its_place():
    q, gone = b.enqueue({}, b.BuildRequest(K1, C1, 1))
    q, _ = b.enqueue(q, b.BuildRequest(K2, C1, 2))
    q, gone = b.enqueue(q, b.BuildRequest(K1, C2, 3))
    assert gone is not None and gone.commit == C1
    assert q[K1].commit == C2 and q[K1].seq == 1
    assert [r.key for r in b.next_builds(q, [], 1)] == [K1]


def test_the_same_commit_again_is_no_new_request():
    q, _ = b.enqueue({}, b.BuildRequest(K1, C1, 1))
    q2, gone = b.enqueue(q, b.BuildRequest(K1, C1, 5))
    assert q2 == q and gone is None


def test_at_most_n_builds_and_one_per_course():
    q = {k: b.BuildRequest(k, C1, i) for i, k in enumerate([K1, K2, K3])}
    assert [r.key for r in b.next_builds(q, [], 2)] == [K1, K2]
    assert [r.key for r in b.next_builds(q, [K1], 2)] == [K2]  # K1 runs: its next commit waits
    assert b.next_builds(q, [K1, K2], 2) == []


def test_wants_build_never_loops_on_a_failed_commit():
    assert b.wants_build(C2, C1, None, None)
    assert not b.wants_build(C2, C2, None, None)  # built (good or failed)
    assert not b.wants_build(C2, C1, C2, None)
    assert not b.wants_build(C2, C1, None, C2)
    assert not b.wants_build(None, None, None, None)


def test_rebuild_annotation_acts_once_per_value():
    assert b.rebuild_requested({b.REBUILD_ANNOTATION: "1"}, None) == "1"
    assert b.rebuild_requested({b.REBUILD_ANNOTATION: "1"}, "1") is None
    assert b.rebuild_requested({b.REBUILD_ANNOTATION: "2"}, "1") == "2"
    assert b.rebuild_requested({}, "1") is None


# -- names ---------------------------------------------------------------------------------------
def test_tags_and_names():
    assert b.build_tag("uai_source-uai.1", C1) == "uai_source-uai.1-" + C1[:12]
    name = b.job_name("a" * 80, C1, "x")
    assert len(name) <= 63 and name.startswith("build-")
    assert b.job_name("c", C1) != b.job_name("c", C1, "rebuild-2")
    assert b.split_image("127.0.0.1:5000/courses:t") == ("127.0.0.1:5000/courses", "t")
    assert b.registry_host("127.0.0.1:5000/courses") == "127.0.0.1:5000"
    assert b.cache_repository("r.example/courses") == "r.example/courses-buildcache"


# -- the Job ---------------------------------------------------------------------------------------
def _pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_job_least_privilege():
    job = b.build_job(course(), C1, name="build-x", options=OPTS)
    pod = _pod(job)
    ctr = pod["containers"][0]
    sc = ctr["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not {"SYS_ADMIN", "NET_ADMIN", "NET_RAW", "MKNOD", "SYS_PTRACE"} & set(sc["capabilities"]["add"])
    assert sc["seccompProfile"] == {"type": "Unconfined"}  # RuntimeDefault refuses unshare(CLONE_NEWUSER)
    assert {e["name"]: e.get("value") for e in ctr["env"]}["STORAGE_DRIVER"] == "vfs"
    assert job["spec"]["backoffLimit"] == 0 and job["metadata"]["namespace"] == "learn"


def test_privileged_only_when_the_operator_says_so():
    job = b.build_job(course(), C1, name="build-x", options=b.BuildOptions(image="i", privileged=True))
    ctr = _pod(job)["containers"][0]
    assert ctr["securityContext"]["privileged"] is True
    assert {e["name"]: e.get("value") for e in ctr["env"]}["STORAGE_DRIVER"] == "overlay"


def test_secrets_are_referenced_never_copied():
    c = course(
        git={"url": "https://git.example.edu/x.git", "secretRef": {"name": "course-token"}},
        pushSecretRef={"name": "push"},
    )
    job = b.build_job(c, C1, name="build-x", options=OPTS, push_secret="push")
    ctr = _pod(job)["containers"][0]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["GIT_TOKEN"] == {
        "name": "GIT_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "course-token", "key": "token", "optional": True}},
    }
    vols = {v["name"]: v for v in _pod(job)["volumes"]}
    assert vols["git-secret"]["secret"] == {"secretName": "course-token", "defaultMode": 0o400}
    assert vols["push-secret"]["secret"]["secretName"] == "push"
    assert all(m.get("readOnly") for m in ctr["volumeMounts"] if m["name"].endswith("secret"))


def test_spec_values_never_become_shell_code():
    evil = "x; curl http://169.254.169.254 #"
    c = course(
        buildArgs=[{"name": "A", "value": evil}], git={"url": "https://git.example.edu/x.git", "ref": "main"}
    )
    job = b.build_job(c, C1, name="build-x", options=OPTS)
    cmd = _pod(job)["containers"][0]["command"]
    assert cmd[:2] == ["/bin/sh", "-c"] and cmd[2] == b.BUILD_SCRIPT  # the script is a constant
    assert cmd[3:] == ["build", "--build-arg", f"A={evil}"]  # positional arguments, quoted by "$@"


def test_job_pushes_the_build_tag_and_moves_the_followed_tag():
    job = b.build_job(course(), C1, name="build-x", options=OPTS)
    env = {e["name"]: e.get("value") for e in _pod(job)["containers"][0]["env"]}
    assert env["BUILD_IMAGE"] == f"registry.example.edu/courses:uai_source-uai.1-{C1[:12]}"
    assert env["FOLLOW_IMAGE"] == "registry.example.edu/courses:uai_source-uai.1"
    assert env["CACHE_REPOSITORY"] == "registry.example.edu/courses-buildcache"
    assert env["REGISTRY_INSECURE"] == "false"
    job = b.build_job(
        course(),
        C1,
        name="x",
        options=b.BuildOptions(image="i", insecure_registries=("registry.example.edu",)),
    )
    env = {e["name"]: e.get("value") for e in _pod(job)["containers"][0]["env"]}
    assert env["REGISTRY_INSECURE"] == "true"


def test_build_script_is_valid_shell(tmp_path):
    import subprocess

    subprocess.run(["sh", "-n", "-c", b.BUILD_SCRIPT], check=True)


def test_ecr_push_secret_is_owned_by_the_job():
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "build-x", "uid": "u"}
    s = b.ecr_push_secret("build-x-push", "learn", "1.dkr.ecr.us-east-1.amazonaws.com", "QVdTOnB3", owner)
    assert s["type"] == "kubernetes.io/dockerconfigjson" and s["metadata"]["ownerReferences"] == [owner]


# -- results -------------------------------------------------------------------------------------
def test_parse_result_takes_only_well_formed_values():
    d = "sha256:" + "a" * 64
    assert b.parse_result(f"digest={d}\ncommit={C1}\n") == {"digest": d, "commit": C1}
    assert b.parse_result("digest=evil\ncommit=x") == {}
    assert b.parse_result(None) == {}


def test_failing_step_is_the_last_step_started():
    log = "STEP clone: fetching abc\nSTEP 1/3: FROM base\nSTEP 2/3: RUN pip install nope\n"
    log += "ERROR: no such package\n"
    assert b.failing_step(log) == "STEP 2/3: RUN pip install nope"
    assert b.failing_step("nothing here") is None


def test_log_tail_is_bounded_and_masks_secrets():
    token = "ghp_S3cretTokenValue"
    import base64

    log = "\n".join(f"line {i}" for i in range(500))
    log += f"\nfatal: https://x-access-token:{token}@git.example.edu/x\n"
    log += f"Authorization: Basic {base64.b64encode(token.encode()).decode()}\n"
    log += f'{{"auths": {{"r": {{"auth": "QVdTOnNlY3JldA=="}}}}}}\nthe token is {token}\n'
    tail = b.log_tail(log, [token])
    assert token not in tail and base64.b64encode(token.encode()).decode().rstrip("=") not in tail
    assert "QVdTOnNlY3JldA" not in tail
    assert len(tail) <= b.LOG_BYTES and len(tail.splitlines()) <= b.LOG_LINES
    assert "line 499" in tail


# -- status --------------------------------------------------------------------------------------
def rec(commit: str, result: str, **kw) -> b.BuildRecordData:
    return b.BuildRecordData(commit=commit, result=result, job=f"job-{commit[0]}-{result}", **kw)


def test_a_failed_build_never_unpublishes_the_last_good_digest():
    d = "sha256:" + "b" * 64
    s = b.BuildState(ref="main").finished(rec(C1, "Succeeded", digest=d, tag="t1"))
    s = s.finished(rec(C2, "Failed", reason="BuildFailed", message="failed at STEP 2/3: RUN false"))
    assert s.good is not None and s.good.digest == d
    cond = b.built_condition(s)
    assert (cond.status, cond.reason) == (False, "BuildFailed")
    assert "STEP 2/3: RUN false" in cond.message and d in cond.message
    st = b.build_status(s)
    assert st["digest"] == d and st["commit"] == C1 and st["last"]["result"] == "Failed"
    CourseImageStatus.model_validate({"build": st})  # the CRD's shape


def test_history_keeps_five_newest_first():
    s = b.BuildState(ref="main")
    for i in range(8):
        s = s.finished(b.BuildRecordData(commit=f"{i}" * 40, result="Succeeded", job=f"j{i}"))
    assert [h.job for h in s.history] == ["j7", "j6", "j5", "j4", "j3"]


def test_conditions_while_queued_building_and_built():
    s = b.BuildState(ref="main", current=rec(C1, "Queued"))
    assert b.built_condition(s).reason == "BuildQueued"
    s = replace_current(s, rec(C1, "Running"))
    assert b.built_condition(s).reason == "Building"
    s = s.finished(replace_result(s.current, "Succeeded", digest="sha256:" + "c" * 64))
    assert (b.built_condition(s).status, b.built_condition(s).reason) == (True, "Built")


def replace_current(s, r):
    from dataclasses import replace

    return replace(s, current=r)


def replace_result(r, result, **kw):
    from dataclasses import replace

    return replace(r, result=result, **kw)


def test_status_round_trips_through_a_restart():
    d = "sha256:" + "d" * 64
    s = b.BuildState(ref="main", latest=C2, rebuild="7").finished(rec(C1, "Succeeded", digest=d))
    s = s.finished(rec(C2, "Failed"))
    again = b.BuildState.from_status("main", {"build": b.build_status(s)})
    assert again.good is not None and again.good.digest == d
    assert (again.latest, again.rebuild, len(again.history)) == (C2, "7", 2)


def test_before_the_first_build_ready_says_why():
    conds = [
        Cond("Ready", False, "ImageNotFound", "ImageResolved: not found"),
        Cond("ImageResolved", False, "ImageNotFound", "not found"),
    ]
    s = b.BuildState(ref="main", current=rec(C1, "Running"))
    out = b.with_build(conds, b.built_condition(s), s, serving=False)
    by = {c.type: c for c in out}
    assert by["Ready"].reason == "Building" and by["Ready"].status is None
    assert by["ImageResolved"].reason == "WaitingForBuild"
    # after a good build, a failing newer build leaves Ready (learners keep the last good image)
    good = s.finished(replace_result(s.current, "Succeeded", digest="sha256:" + "e" * 64))
    failed = good.finished(rec(C2, "Failed", reason="BuildFailed"))
    ok = [Cond("Ready", True, "Ready", "fine"), Cond("ImageResolved", True, "Resolved", "")]
    by = {c.type: c for c in b.with_build(ok, b.built_condition(failed), failed, serving=True)}
    assert by["Ready"].status is True and by["Built"].reason == "BuildFailed"
    # Built, the tag not resolved yet: waiting for it, not ImageNotFound (no Warning flap)
    by = {c.type: c for c in b.with_build(conds, b.built_condition(good), good, serving=False)}
    assert (by["Ready"].reason, by["ImageResolved"].reason) == ("WaitingForBuild", "WaitingForBuild")
    assert by["Ready"].status is None


def test_build_arg_names_are_checked():
    with pytest.raises(ValidationError, match="name"):
        course(buildArgs=[{"name": "1BAD", "value": "x"}])
    with pytest.raises(ValidationError, match="each name once"):
        course(buildArgs=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}])


# -- a refused build pod is reported at once, not at the Job's deadline ----------------------------
PSA = (
    'Error creating: pods "build-uai-1-111111111111-abcdef-x7k2p" is forbidden: violates PodSecurity '
    '"baseline:latest": seccompProfile (pod or container "build" must not set '
    'securityContext.seccompProfile.type to "Unconfined")'
)


def failed_create(message: str, job: str = "build-uai-1", at: str = "2026-01-01T00:00:05Z") -> dict:
    return {
        "reason": "FailedCreate",
        "type": "Warning",
        "message": message,
        "involvedObject": {"kind": "Job", "name": job},
        "lastTimestamp": at,
    }


def job(**status) -> dict:
    return {"metadata": {"name": "build-uai-1"}, "status": status}


def test_pod_security_refusal_names_the_level_and_the_fix():
    got = b.pod_refused(job(), [failed_create(PSA)], "learn")
    assert got is not None
    reason, message = got
    assert reason == "BuildPodRefused"
    assert 'violates PodSecurity "baseline:latest"' in message
    assert "namespace learn (baseline)" in message
    assert "pod-security.kubernetes.io/enforce=privileged" in message
    assert not message.startswith("Error creating")


def test_quota_refusal_names_the_quota_and_the_fix():
    quota = (
        'Error creating: pods "build-uai-1-x" is forbidden: exceeded quota: builds, requested: '
        "limits.memory=4Gi, used: limits.memory=0, limited: limits.memory=1Gi"
    )
    reason, message = b.pod_refused(job(), [failed_create(quota)], "learn") or ("", "")
    assert reason == "BuildPodRefused"
    assert "exceeded quota: builds" in message and "spec.build.resources" in message


def test_no_refusal_while_a_pod_exists_or_for_other_jobs_and_the_newest_event_wins():
    assert b.pod_refused(job(active=1), [failed_create(PSA)], "learn") is None
    assert b.pod_refused(job(failed=1), [failed_create(PSA)], "learn") is None
    assert b.pod_refused(job(), [failed_create(PSA, job="build-other")], "learn") is None
    assert b.pod_refused(job(), [{**failed_create(PSA), "reason": "SuccessfulCreate"}], "learn") is None
    assert b.pod_refused(job(), [], "learn") is None
    old = failed_create('Error creating: pods "x" is forbidden: exceeded quota: q', at="2026-01-01T00:00:01Z")
    _reason, message = b.pod_refused(job(), [old, failed_create(PSA)], "learn") or ("", "")
    assert "PodSecurity" in message and "quota" not in message


def test_a_refused_build_keeps_the_last_good_digest_and_says_why():
    good = b.BuildRecordData(commit=C1, result="Succeeded", digest="sha256:" + "a" * 64, job="j1", tag="t1")
    state = b.BuildState(ref="main", good=good, history=(good,))
    reason, message = b.pod_refused(job(), [failed_create(PSA)], "learn") or ("", "")
    rec = b.BuildRecordData(commit=C2, result="Failed", job="j2", reason=reason, message=message)
    after = state.finished(rec)
    assert after.good == good
    cond = b.built_condition(after)
    assert (cond.status, cond.reason) == (False, "BuildPodRefused")
    assert "pod-security.kubernetes.io/enforce=privileged" in cond.message and good.digest in cond.message
    assert b.build_status(after)["digest"] == good.digest
