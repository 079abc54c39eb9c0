"""Option handling of the in-hub course spawner: pure functions, no hub, no cluster."""

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from traitlets.config import Config

from coursehub.hub import course_spawner as cs
from coursehub.hub import extra_config_snippets, hub_config_overrides


def img(name: str) -> str:
    return f"registry.example/ol-course-notebooks@sha256:{(name.encode().hex() * 64)[:64]}"


def allowlist_doc(**over) -> dict:
    doc = {
        "version": 1,
        "hub": "learn",
        "default": "clustering_and_descriptive_ai",
        "onUnknown": "default",
        "gpu": {
            "nodeSelector": {"ol.mit.edu/gpu_node": "true"},
            "tolerations": [
                {"key": "ol.mit.edu/gpu_node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            ],
            "resource": "nvidia.com/gpu",
        },
        "courses": {
            "clustering_and_descriptive_ai": {
                "course": "clustering_and_descriptive_ai",
                "image": img("clu"),
                "gpu": "none",
                "resources": {
                    "memory": {"limit": None, "guarantee": None},
                    "cpu": {"limit": None, "guarantee": None},
                },
            },
            "uai_source-uai.1": {
                "course": "UAI_source-uai.1",
                "image": img("uai1"),
                "gpu": "required",
                "defaultNotebook": "intro.ipynb",
                "resources": {
                    "memory": {"limit": "8G", "guarantee": "4G"},
                    "cpu": {"limit": 2, "guarantee": "500m"},
                },
            },
            "mitxt-6.3710.3x": {"course": "mitxt-6.3710.3x", "image": img("mitx"), "gpu": "optional"},
        },
    }
    doc.update(over)
    return doc


def allowlist(**over) -> cs.Allowlist:
    return cs.parse_allowlist(json.dumps(allowlist_doc(**over)))


ALLOWED = allowlist().images()


# ------------------------------------------------------------------ course matching


@pytest.mark.parametrize("slug", ["uai_source-uai.1", "UAI_SOURCE-UAI.1", "  Uai_Source-Uai.1 "])
def test_course_is_matched_case_insensitively(slug):
    plan = cs.plan_launch(allowlist(), {"course": [slug]})
    assert plan.course.key == "uai_source-uai.1"
    assert plan.image == img("uai1")


def test_unknown_course_gets_default_image_under_default_policy():
    plan = cs.plan_launch(allowlist(), {"course": "not-a-course"})
    assert plan.image == img("clu")
    assert any("not offered" in n for n in plan.notes)


def test_unknown_course_is_refused_under_reject_policy():
    with pytest.raises(cs.CourseRefused) as e:
        cs.plan_launch(allowlist(onUnknown="reject"), {"course": "not-a-course"})
    assert e.value.status == 400 and e.value.kind == "not_offered"
    assert "not-a-course" in e.value.message and "not offered" in e.value.message


def test_unknown_course_without_default_is_refused_even_under_default_policy():
    with pytest.raises(cs.CourseRefused) as e:
        cs.plan_launch(allowlist(default=None), {"course": "nope"})
    assert e.value.kind == "not_offered"


def test_missing_course_uses_default_or_is_refused():
    assert cs.plan_launch(allowlist(onUnknown="reject"), {}).image == img("clu")
    with pytest.raises(cs.CourseRefused) as e:
        cs.plan_launch(allowlist(default=None), {})
    assert e.value.status == 400


def test_unpublished_allowlist_refuses():
    with pytest.raises(cs.CourseRefused) as e:
        cs.plan_launch(cs.Allowlist(published=False), {"course": "x"})
    assert e.value.status == 503


@pytest.mark.parametrize(
    "extra",
    [
        {"tag": "latest"},
        {"image": "evil/image:latest"},
        {"profile": "gpu-big"},
        {"image": ["evil/image"], "tag": ["x"], "profile-option-a--image": "evil"},
        {"kubespawner_override": {"image": "evil"}},
    ],
)
def test_image_parameters_are_ignored(extra):
    plan = cs.plan_launch(allowlist(), {"course": "mitxt-6.3710.3x", **extra})
    assert plan.image == img("mitx")
    assert set(cs.normalize_options({"course": "x", **extra})) == {"course"}


def test_course_entries_that_are_not_digest_pinned_are_dropped():
    doc = allowlist_doc()
    doc["courses"]["tagged"] = {"course": "tagged", "image": "registry.example/nb:tagged"}
    dropped = []
    al = cs.parse_allowlist(json.dumps(doc), on_bad_course=dropped.append)
    assert "tagged" not in al.courses and dropped
    assert cs.plan_launch(al, {"course": "tagged"}).image == img("clu")


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"version": 2}', '{"version":1,"onUnknown":"maybe"}'])
def test_malformed_allowlist_documents_raise(text):
    with pytest.raises(cs.AllowlistError):
        cs.parse_allowlist(text)


# ---------------------------------------------------------------------- notebooks


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("intro.ipynb", "intro.ipynb"),
        ("week1/lab 2.ipynb", "week1/lab 2.ipynb"),
        ("week1%2Flab%202.ipynb", "week1/lab 2.ipynb"),
        ("week1%252Flab.ipynb", "week1/lab.ipynb"),  # encoded twice
        ("Ünïcode/ノート.ipynb", "Ünïcode/ノート.ipynb"),
    ],
)
def test_valid_notebooks(raw, expected):
    assert cs.validate_notebook(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "../etc/passwd.ipynb",
        "a/../../b.ipynb",
        "%2e%2e/x.ipynb",
        "%252e%252e/x.ipynb",
        "/abs/path.ipynb",
        "~/x.ipynb",
        "a\\..\\b.ipynb",
        "a//b.ipynb",
        "./x.ipynb",
        "notes.txt",
        "x.ipynb.py",
        ".ipynb",
        "",
        "   ",
        "a\x00b.ipynb",
        "a\nb.ipynb",
        "x" * 600 + ".ipynb",
        "%ff%fe.ipynb",
        "a%zz.ipynb",
        None,
        42,
        ["a.ipynb"],
    ],
)
def test_invalid_notebooks(raw):
    assert cs.validate_notebook(raw) is None


def test_notebook_becomes_lab_url_and_invalid_one_is_ignored_with_a_note():
    plan = cs.plan_launch(allowlist(), {"course": "mitxt-6.3710.3x", "notebook": "week 1/a.ipynb"})
    assert plan.default_url == "/lab/tree/week%201/a.ipynb"
    plan = cs.plan_launch(allowlist(), {"course": "mitxt-6.3710.3x", "notebook": "../a.ipynb"})
    assert plan.default_url is None
    assert any("invalid notebook" in n for n in plan.notes)


def test_course_default_notebook_is_used_when_none_requested():
    plan = cs.plan_launch(allowlist(), {"course": "uai_source-uai.1"})
    assert plan.default_url == "/lab/tree/intro.ipynb"
    plan = cs.plan_launch(allowlist(), {"course": "uai_source-uai.1", "notebook": "b.ipynb"})
    assert plan.default_url == "/lab/tree/b.ipynb"


# ---------------------------------------------------------------------- GPU, resources

BASELINE = {
    "image": "quay.io/jupyterhub/k8s-singleuser-sample:4.4.0",
    "default_url": "",
    "mem_limit": 4 * 1024**3,
    "mem_guarantee": 2 * 1024**3,
    "cpu_limit": None,
    "cpu_guarantee": 0.25,
    "node_affinity_required": [],
    "tolerations": [
        {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"}
    ],
    "extra_resource_limits": {},
    "extra_resource_guarantees": {},
}
GPU_TERM = {"key": "ol.mit.edu/gpu_node", "operator": "In", "values": ["true"]}
GPU_TOL = {"key": "ol.mit.edu/gpu_node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}


def traits(options, al=None, baseline=BASELINE):
    return cs.merge_traits(baseline, cs.plan_launch(al or allowlist(), options))


def assert_gpu(t):
    assert t["node_affinity_required"] == [{"matchExpressions": [GPU_TERM]}]
    assert GPU_TOL in t["tolerations"]
    assert t["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    assert t["extra_resource_guarantees"] == {"nvidia.com/gpu": "1"}


def assert_no_gpu(t):
    assert t["node_affinity_required"] == []
    assert GPU_TOL not in t["tolerations"]
    assert t["extra_resource_limits"] == {} and t["extra_resource_guarantees"] == {}


def test_required_gpu_course_always_gets_gpu():
    assert_gpu(traits({"course": "uai_source-uai.1"}))
    assert_gpu(traits({"course": "uai_source-uai.1", "gpu": "false"}))


@pytest.mark.parametrize("flag", ["1", "true", "TRUE", "yes", "on", True, ["true"]])
def test_optional_gpu_course_gets_gpu_only_when_asked(flag):
    assert_gpu(traits({"course": "mitxt-6.3710.3x", "gpu": flag}))
    assert_gpu(traits({"course": "mitxt-6.3710.3x", "needs_gpu": flag}))


@pytest.mark.parametrize("flag", [None, "0", "false", "no", "", False, 1.5, {"x": 1}])
def test_optional_gpu_course_without_request_gets_none(flag):
    opts = {"course": "mitxt-6.3710.3x"} if flag is None else {"course": "mitxt-6.3710.3x", "gpu": flag}
    assert_no_gpu(traits(opts))


def test_gpu_is_never_given_to_a_non_gpu_course():
    assert_no_gpu(traits({"course": "clustering_and_descriptive_ai", "gpu": "true"}))


def test_gpu_course_on_hub_without_gpu_nodes_is_refused():
    with pytest.raises(cs.CourseRefused) as e:
        cs.plan_launch(allowlist(gpu=None), {"course": "uai_source-uai.1"})
    assert e.value.status == 503


def test_gpu_expressions_are_anded_into_existing_required_terms():
    base = dict(
        BASELINE,
        node_affinity_required=[
            {
                "matchExpressions": [
                    {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}
                ]
            }
        ],
    )
    t = traits({"course": "uai_source-uai.1"}, baseline=base)
    assert t["node_affinity_required"] == [
        {
            "matchExpressions": [
                {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]},
                GPU_TERM,
            ]
        }
    ]
    # the baseline itself is not mutated (a reused spawner starts from it again)
    assert len(base["node_affinity_required"][0]["matchExpressions"]) == 1


def test_course_resources_override_hub_defaults_and_nulls_keep_them():
    t = traits({"course": "uai_source-uai.1"})
    assert t["mem_limit"] == 8 * 1024**3 and t["mem_guarantee"] == 4 * 1024**3
    assert t["cpu_limit"] == 2.0 and t["cpu_guarantee"] == 0.5
    t = traits({"course": "clustering_and_descriptive_ai"})
    assert t["mem_limit"] == 4 * 1024**3 and t["mem_guarantee"] == 2 * 1024**3
    assert t["cpu_limit"] is None and t["cpu_guarantee"] == 0.25
    assert t["default_url"] == "" and t["image"] == img("clu")


@pytest.mark.parametrize(
    "q,n",
    [
        ("8G", 8 * 1024**3),
        ("512Mi", 512 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
        (1024, 1024),
        (None, None),
        ("0", None),
    ],
)
def test_parse_memory(q, n):
    assert cs.parse_memory(q) == n


# ----------------------------------------------------------------------- properties

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
known_or_random_key = st.one_of(
    st.sampled_from(["course", "notebook", "gpu", "needs_gpu", "tag", "image", "profile", "next"]),
    st.text(max_size=20),
)
course_like = st.one_of(
    st.sampled_from(["uai_source-uai.1", "UAI_SOURCE-UAI.1", "mitxt-6.3710.3x", "nope", ""]),
    st.text(max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(
    user_options=st.dictionaries(known_or_random_key, json_values, max_size=8),
    course=st.one_of(st.none(), course_like),
    policy=st.sampled_from(["default", "reject"]),
    has_default=st.booleans(),
)
def test_arbitrary_user_options_never_yield_an_image_outside_the_allowlist(
    user_options, course, policy, has_default
):
    if course is not None:
        user_options = dict(user_options, course=course)
    al = allowlist(onUnknown=policy, default="clustering_and_descriptive_ai" if has_default else None)
    try:
        t = traits(user_options, al)
    except cs.CourseRefused as e:
        assert 400 <= e.status < 600
        return
    assert t["image"] in ALLOWED
    if t["default_url"]:
        assert t["default_url"].startswith("/lab/tree/") and ".." not in t["default_url"].split("/")


@settings(max_examples=400, deadline=None)
@given(
    query=st.dictionaries(
        known_or_random_key, st.lists(st.text(max_size=40), min_size=1, max_size=3), max_size=8
    )
)
def test_arbitrary_query_strings_never_yield_an_image_outside_the_allowlist(query):
    # the shape JupyterHub hands options_from_query: {key: [str, ...]}
    opts = cs.normalize_options(query)
    assert set(opts) <= {"course", "notebook", "gpu"}
    assert cs.normalize_options(opts) == opts  # stored options re-normalize to themselves
    try:
        plan = cs.plan_launch(allowlist(), query)
    except cs.CourseRefused:
        return
    assert plan.image in ALLOWED


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_valid_notebook_paths_are_always_relative_and_clean(raw):
    nb = cs.validate_notebook(raw)
    if nb is not None:
        assert not nb.startswith("/") and nb.endswith(".ipynb") and len(nb) <= cs.MAX_NOTEBOOK_LEN
        assert ".." not in nb.split("/") and "\\" not in nb


def test_launch_query_keeps_only_launch_keys():
    q = cs.launch_query(
        {
            "course": [b"UAI_source-uai.1"],
            "notebook": [b"a b.ipynb"],
            "gpu": [b"1"],
            "tag": [b"x"],
            "next": [b"/evil"],
        }
    )
    assert q == {"course": "UAI_source-uai.1", "notebook": "a b.ipynb", "gpu": "true"}


# -------------------------------------------------------------------------- the cache


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


async def test_cache_reads_once_per_ttl_and_shares_inflight_reads():
    clock = Clock()
    cache = cs.AllowlistCache(ttl=1.0, clock=clock)
    text = json.dumps(allowlist_doc())

    async def fetch():
        await asyncio.sleep(0)
        return text, "1"

    results = await asyncio.gather(*(cache.get("k", fetch) for _ in range(50)))
    assert cache.reads == 1 and all(r is results[0] for r in results)
    clock.t = 0.5
    await cache.get("k", fetch)
    assert cache.reads == 1
    clock.t = 1.5
    again = await cache.get("k", fetch)
    assert cache.reads == 2 and again is results[0]  # same resourceVersion: not re-parsed


async def test_cache_serves_last_good_copy_when_the_api_fails_and_refuses_without_one():
    clock = Clock()
    cache = cs.AllowlistCache(ttl=1.0, clock=clock)
    good = await cache.get("k", lambda: _ret((json.dumps(allowlist_doc()), "1")))

    async def broken():
        raise OSError("connection refused")

    clock.t = 5
    assert await cache.get("k", broken) is good
    with pytest.raises(cs.CourseRefused) as e:
        await cs.AllowlistCache().get("other", broken)
    assert e.value.status == 503
    missing = await cs.AllowlistCache().get("absent", lambda: _ret((None, None)))
    assert missing.published is False


async def _ret(value):
    return value


# --------------------------------------------------------------- embedding as text


def test_snippets_configure_c_when_exec_d_like_z2jh_does():
    c = Config()
    c.JupyterHub.authenticator_class = "tmp"
    c.KubeSpawner.namespace = "jupyter"
    namespace = {"c": c, "get_config": lambda key, default=None: default}
    snippets = extra_config_snippets(allowlist_configmap="my-allowlist")
    assert list(snippets) == sorted(snippets)  # z2jh exec's in sorted key order
    for _key, source in sorted(snippets.items()):
        exec(compile(source, _key, "exec"), namespace)
    assert c.JupyterHub.spawner_class.__name__ == "CourseSpawner"
    assert c.JupyterHub.authenticator_class.__name__ == "CourseTmpAuthenticator"
    assert namespace["SOURCE"].configmap == "my-allowlist"
    assert hub_config_overrides() == {}


def test_snippet_leaves_other_authenticators_alone():
    c = Config()
    c.JupyterHub.authenticator_class = "generic-oauth"
    namespace = {"c": c, "get_config": lambda key, default=None: default}
    exec(extra_config_snippets()["coursehub-20-course-spawner"], namespace)
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert namespace["SOURCE"].configmap == "coursehub-allowlist"


def test_importing_the_module_configures_nothing():
    assert not hasattr(cs, "c")
    assert cs.SOURCE.configmap == "coursehub-allowlist"


# ------------------------------------------------------------- one identity, bounded


def limits(**over) -> cs.Limits:
    raw = {"activeServers": None, "serversPerIdentity": 2, "gpuServersPerIdentity": 1, "identity": "gateway"}
    return cs.parse_limits({**raw, **over})


def test_limits_section_is_parsed_and_absent_means_none():
    assert allowlist().limits == cs.Limits()  # an allowlist from an older operator
    al = allowlist(limits={"activeServers": 50, "serversPerIdentity": 2, "gpuServersPerIdentity": 1})
    assert al.limits == cs.Limits(50, 2, 1, gateway_identity=False)
    assert limits().gateway_identity is True


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, [2]])
def test_malformed_limits_raise_naming_the_key(bad):
    with pytest.raises(cs.AllowlistError, match=r"limits\.serversPerIdentity"):
        cs.parse_allowlist(json.dumps(allowlist_doc(limits={"serversPerIdentity": bad})))
    with pytest.raises(cs.AllowlistError, match=r"allowlist\.limits"):
        cs.parse_allowlist(json.dumps(allowlist_doc(limits=[1])))


def test_operator_limits_reach_the_hub_as_written(tmp_path):
    # the operator's side of the contract, parsed by the hub's side; the operator's modules
    # need its dependencies (boto3 via coursehub.registry), which the hub image lacks
    pytest.importorskip("botocore", reason="operator dependencies: runs in the operator's venv")
    from coursehub.api.jupyterhubdeployment import JupyterHubDeploymentSpec
    from coursehub.desired.allowlist import limits_settings
    from coursehub.desired.courses import HubRecord

    def hub(**spec):
        base = {"chart": {"path": "/c"}, "domain": "nb.example.edu", "database": {"type": "sqlite-memory"}}
        return HubRecord(
            "ns", "learn", "uid", "now", 1, JupyterHubDeploymentSpec.model_validate({**base, **spec})
        )

    ungated = cs.parse_limits(limits_settings(hub()))
    assert ungated == cs.Limits(None, 2, 1, gateway_identity=False)
    gated = hub(
        limits={"activeServers": 300, "serversPerIdentity": 1, "gpuServersPerIdentity": 0},
        gateway={
            "oidc": {
                "issuerURL": "https://sso.example.edu/realms/x",
                "secretRef": {"name": "oidc"},
                "emailDomains": ["example.edu"],
            }
        },
    )
    assert cs.parse_limits(limits_settings(gated)) == cs.Limits(300, 1, 0, gateway_identity=True)


def test_gateway_identity_prefers_email_and_folds_case():
    assert cs.gateway_identity({"X-Forwarded-User": "kc-1", "X-Forwarded-Email": " Ana@Example.EDU "}) == (
        "ana@example.edu"
    )
    assert cs.gateway_identity({"X-Forwarded-Preferred-Username": "Ana", "X-Forwarded-User": "kc-1"}) == "ana"
    assert cs.gateway_identity({"X-Forwarded-User": "kc-1"}) == "kc-1"


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Forwarded-Email": ""}, {"X-Forwarded-Email": "a\nb@x"}, {"X-Forwarded-User": "x" * 400}],
)
def test_no_plausible_identity_is_none(headers):
    assert cs.gateway_identity(headers) is None


def slot(identity, gpu=False, n=0):
    return cs.Slot(identity, gpu, f"user-{n}", f"course-{n}")


def test_servers_per_identity_counts_only_that_identity():
    mine = [slot("ana", n=1), slot("ana", n=2)]
    refusal = cs.check_limits(limits(), [*mine, slot("bo")], identity="ana", gpu=False)
    assert refusal.kind == "identity" and refusal.running == tuple(mine)
    assert cs.check_limits(limits(), [slot("ana"), slot("bo")], identity="ana", gpu=False) is None
    assert cs.check_limits(limits(), mine, identity="bo", gpu=False) is None


def test_gpu_servers_per_identity_counts_gpu_servers():
    refusal = cs.check_limits(limits(), [slot("ana", gpu=True, n=1)], identity="ana", gpu=True)
    assert refusal.kind == "gpu" and [s.user for s in refusal.running] == ["user-1"]
    # a CPU launch next to one GPU server is within serversPerIdentity
    assert cs.check_limits(limits(), [slot("ana", gpu=True)], identity="ana", gpu=False) is None


def test_per_identity_limits_need_the_gateway_and_an_identity():
    many = [slot("ana", gpu=True, n=i) for i in range(5)]
    assert cs.check_limits(limits(identity=None), many, identity="ana", gpu=True) is None
    assert cs.check_limits(limits(), many, identity=None, gpu=True) is None


def test_active_servers_bounds_the_whole_hub():
    others = [slot(f"p{i}", n=i) for i in range(3)]
    assert cs.check_limits(limits(activeServers=3), others, identity=None, gpu=False).kind == "hub"
    assert cs.check_limits(limits(activeServers=4), others, identity="new", gpu=False) is None


def test_limit_page_links_each_running_server_and_escapes_names():
    refusal = cs.LimitRefusal("identity", "Too many <b>", (cs.Slot("ana", False, "u1", "<Course & 1>"),))
    page = cs.limit_page_html(refusal, lambda s: f"/hub/tmplogin?resume={s.user}&x=1")
    assert "Too many &lt;b&gt;" in page and "&lt;Course &amp; 1&gt;" in page
    assert 'href="/hub/tmplogin?resume=u1&amp;x=1"' in page


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    """KubeSpawner loads a kubeconfig when built; this one points nowhere and is never used."""
    from kubernetes_asyncio.config import kube_config

    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "unused"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    # read by kubernetes_asyncio at import, so set where it looks
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


async def test_identity_survives_in_the_spawner_state_and_a_stop(kubeconfig):
    s = cs.CourseSpawner(_mock=True)
    s.coursehub_identity, s._coursehub_gpu, s._coursehub_course = "ana@example.edu", True, "UAI 1"
    restored = cs.CourseSpawner(_mock=True)  # as the hub does after a restart
    restored.load_state(json.loads(json.dumps(s.get_state())))  # through the database's JSON
    assert (restored.coursehub_identity, restored._coursehub_gpu, restored._coursehub_course) == (
        "ana@example.edu",
        True,
        "UAI 1",
    )
    restored.clear_state()  # JupyterHub clears state on every start and stop
    assert restored.coursehub_identity == "ana@example.edu"
    assert restored.coursehub_slot() is None  # a stopped server does not count


async def test_concurrent_admissions_of_one_identity_pass_at_most_the_limit(kubeconfig):
    al = allowlist(limits={"serversPerIdentity": 5, "gpuServersPerIdentity": 2, "identity": "gateway"})
    plan = cs.plan_launch(al, {"course": "uai_source-uai.1"})  # a GPU course
    spawners = [cs.CourseSpawner(_mock=True) for _ in range(20)]

    async def launch(spawner):
        await asyncio.sleep(0)  # the allowlist read: every launch is in flight at once
        return spawner.admit(al.limits, plan, "ana@example.edu")

    refusals = await asyncio.gather(*(launch(s) for s in spawners))
    assert sum(r is None for r in refusals) == 2
    assert {r.kind for r in refusals if r is not None} == {"gpu"}
    for s in spawners:
        s._coursehub_reserved = False  # leave no counted servers to other tests


# ------------------------------------------- identity headers count only from the proxy


def test_socket_peer_is_the_tcp_peer_not_the_forwarded_for_headers():
    """JupyterHub serves with xheaders=True: remote_ip is whatever a client claims."""
    import socket
    import threading

    from tornado import httpserver, web

    seen = {}

    class Echo(web.RequestHandler):
        def get(self):
            seen.update(remote_ip=self.request.remote_ip, peer=cs.socket_peer(self.request))
            self.finish("ok")

    ready = threading.Event()
    state = {}

    async def serve():
        server = httpserver.HTTPServer(web.Application([("/", Echo)]), xheaders=True)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        server.add_sockets([sock])
        state.update(loop=asyncio.get_running_loop(), stop=asyncio.Event(), port=sock.getsockname()[1])
        ready.set()
        await state["stop"].wait()
        server.stop()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        # a learner-like client: its own loopback address, claiming to be the proxy
        client = socket.create_connection(
            ("127.0.0.1", state["port"]), timeout=10, source_address=("127.0.0.2", 0)
        )
        client.sendall(
            b"GET / HTTP/1.1\r\nHost: hub\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-Ip: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n"
        )
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
        client.close()
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
    assert reply.startswith(b"HTTP/1.1 200")
    assert seen == {"remote_ip": "127.0.0.1", "peer": "127.0.0.2"}


def test_proxy_pod_ips_are_the_live_proxy_pods_addresses():
    pods = [
        {
            "status": {
                "phase": "Running",
                "podIP": "10.1.0.7",
                "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00::7"}],
            }
        },
        {"status": {"phase": "Pending", "podIP": "::ffff:10.1.0.8"}},  # IPv4-mapped: as IPv4
        {"status": {"phase": "Succeeded", "podIP": "10.1.0.9"}},  # an old proxy's IP may be reused
        {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"podIP": "10.1.0.10"}},
        {"status": {"phase": "Pending"}},  # no IP yet
        {"status": {"podIP": "not-an-ip"}},
    ]
    assert cs.proxy_pod_ips(pods) == {"10.1.0.7", "fd00::7", "10.1.0.8"}
    assert cs.proxy_pod_ips(None) == frozenset()


def test_identity_headers_count_only_when_the_tcp_peer_is_the_proxy():
    headers = {"X-Forwarded-Email": "Ana@Example.edu"}
    proxies = frozenset({"10.1.0.7"})
    assert cs.trusted_identity(headers, "10.1.0.7", proxies) == "ana@example.edu"
    assert cs.trusted_identity(headers, "10.1.0.8", proxies) is None  # a learner pod
    assert cs.trusted_identity(headers, None, proxies) is None
    assert cs.trusted_identity(headers, "10.1.0.7", frozenset()) is None  # proxy unknown: closed
    assert cs.normalize_ip("::ffff:10.1.0.7") == "10.1.0.7" and cs.normalize_ip("x") is None


async def test_proxy_peers_reread_on_a_miss_at_most_once_per_interval():
    now = [0.0]
    answers = [[{"status": {"podIP": "10.1.0.7"}}]]

    async def fetch():
        await asyncio.sleep(0)
        return answers[-1]

    peers = cs.ProxyPeers(fetch, reread_seconds=1.0, clock=lambda: now[0])
    # concurrent misses share one read
    results = await asyncio.gather(*(peers.is_proxy("10.1.0.7") for _ in range(5)))
    assert results == [True] * 5 and peers.reads == 1
    assert await peers.is_proxy("10.1.0.7") and peers.reads == 1  # known: no read
    # a learner's probes: one re-read per interval, not one per request
    assert not await peers.is_proxy("10.1.0.66") and peers.reads == 1
    now[0] = 1.0
    assert not await peers.is_proxy("10.1.0.66") and peers.reads == 2
    assert not await peers.is_proxy("10.1.0.66") and peers.reads == 2
    # the proxy restarted with a new IP: refused until the interval is over, then found
    answers.append([{"status": {"podIP": "10.1.0.8"}}])
    now[0] = 1.5
    assert not await peers.is_proxy("10.1.0.8") and peers.reads == 2
    now[0] = 2.0
    assert await peers.is_proxy("10.1.0.8") and peers.reads == 3
    assert not await peers.is_proxy("10.1.0.7")  # the old proxy's IP no longer counts
    assert not await peers.is_proxy(None)


async def test_proxy_peers_keep_the_last_set_when_the_api_fails():
    now = [0.0]
    calls = []

    async def fetch():
        calls.append(1)
        if len(calls) > 1:
            raise OSError("API down")
        return [{"status": {"podIP": "10.1.0.7"}}]

    peers = cs.ProxyPeers(fetch, reread_seconds=1.0, clock=lambda: now[0])
    assert await peers.is_proxy("10.1.0.7")
    now[0] = 5.0
    assert not await peers.is_proxy("10.1.0.66")  # the failed read refuses the unknown peer
    assert await peers.is_proxy("10.1.0.7")


# ------------------------------------------------------------------- the staff page


def test_staff_are_admins_and_members_of_the_staff_group_only():
    assert cs.is_staff(True, [], "coursehub-staff")
    assert cs.is_staff(False, ["learners", "coursehub-staff"], "coursehub-staff")
    assert not cs.is_staff(False, ["learners"], "coursehub-staff")
    assert not cs.is_staff(False, ["Coursehub-Staff"], "coursehub-staff")  # group names are exact
    assert not cs.is_staff(False, [""], "")  # no staff group configured: admins only
    assert not cs.is_staff(False, ["coursehub-staff"], None)
    assert not cs.is_staff(1, [], "coursehub-staff")  # admin means the database's True only


def test_staff_page_links_every_offered_course_sorted_and_drops_bad_entries():
    doc = allowlist_doc()
    doc["courses"]["broken"] = {"course": "broken", "image": "registry.example/x:latest"}
    doc["courses"]["uai_source-uai.1"]["displayName"] = "Universal AI 1"
    doc["courses"]["mitxt-6.3710.3x"]["defaultNotebook"] = "../etc/passwd.ipynb"
    links = cs.course_links(cs.parse_allowlist(json.dumps(doc)), "https://nb.example.edu/hub/")
    assert [link.course for link in links] == [
        "clustering_and_descriptive_ai",
        "mitxt-6.3710.3x",
        "UAI_source-uai.1",  # sorted by title: "Universal AI 1"
    ]
    by_course = {link.course: link for link in links}
    uai = by_course["UAI_source-uai.1"]
    assert uai.url == "https://nb.example.edu/hub/tmplogin?course=UAI_source-uai.1"
    assert (uai.title, uai.gpu, uai.notebook, uai.default) == (
        "Universal AI 1",
        "required",
        "intro.ipynb",
        False,
    )
    assert by_course["clustering_and_descriptive_ai"].default is True
    assert by_course["mitxt-6.3710.3x"].notebook is None  # an unsafe default notebook is not shown
    assert cs.course_links(cs.parse_allowlist(json.dumps(allowlist_doc(courses={}))), "/hub/") == []


def test_staff_page_escapes_what_course_authors_wrote():
    """JupyterHub renders templates with autoescape on; a display name is author input."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.DictLoader({"page.html": "{% block main %}{% endblock %}"}), autoescape=True
    )
    doc = allowlist_doc()
    doc["courses"]["clustering_and_descriptive_ai"]["displayName"] = '<script>alert("x")</script>'
    doc["courses"]["clustering_and_descriptive_ai"]["course"] = 'a"b&c'
    links = cs.course_links(cs.parse_allowlist(json.dumps(doc)), "/hub/")
    page = env.from_string(cs.STAFF_TEMPLATE).render(links=links)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'data-course="a&#34;b&amp;c"' in page
    assert 'href="/hub/tmplogin?course=a%22b%26c"' in page
    empty = env.from_string(cs.STAFF_TEMPLATE).render(links=[])
    assert "No courses are published on this hub yet." in empty


def test_snippet_adds_the_staff_page_with_the_configured_group():
    c = Config()
    c.JupyterHub.extra_handlers = [("/other", object)]
    namespace = {"c": c, "get_config": lambda key, default=None: default}
    exec(extra_config_snippets(staff_group="teachers")["coursehub-20-course-spawner"], namespace)
    handler = namespace["StaffCoursesHandler"]
    assert c.JupyterHub.extra_handlers == [("/other", object), ("/courses", handler)]
    assert namespace["STAFF"].group == "teachers"
    for configured, group in ((None, cs.DEFAULT_STAFF_GROUP), ("", None)):
        c = Config()
        cs.configure_hub(c, staff_group=configured)
        assert cs.STAFF.group == group
        assert c.JupyterHub.extra_handlers == [("/courses", cs.StaffCoursesHandler)]
    cs.configure_hub(c)
    assert len(c.JupyterHub.extra_handlers) == 1  # configuring twice adds the page once


def test_default_staff_group_is_one_name_on_both_sides():
    from coursehub import hub

    assert hub.DEFAULT_STAFF_GROUP == cs.DEFAULT_STAFF_GROUP
    assert (
        f"'staff_group': {cs.DEFAULT_STAFF_GROUP!r}" in extra_config_snippets()["coursehub-20-course-spawner"]
    )
