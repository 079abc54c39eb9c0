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
