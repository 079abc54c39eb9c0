"""Course launch links against a real JupyterHub, PostgreSQL, proxy and control plane.

kwok runs the pods but no notebook server ever answers, so each test asserts on the
pod KubeSpawner created and on the hub's REST API, then stops the server.
"""

import html
import http.client
import json
import re
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlencode, urlparse

import pytest

from fixtures.jupyterhub import proxy_stand_in_pod, wait_until, z2jh_values

pytestmark = pytest.mark.e2e

GPU_KEY, GPU_VALUE = "ol.mit.edu/gpu_node", "true"
GPU = {
    "nodeSelector": {GPU_KEY: GPU_VALUE},
    "tolerations": [{"key": GPU_KEY, "operator": "Equal", "value": GPU_VALUE, "effect": "NoSchedule"}],
    "resource": "nvidia.com/gpu",
}


def image_for(slug: str) -> str:
    return "registry.example/ol-course-notebooks@sha256:" + (slug.encode().hex() * 64)[:64]


def course(slug: str, *, gpu: str = "none", **extra) -> dict:
    return {"course": slug, "image": image_for(slug), "displayName": slug, "gpu": gpu, **extra}


BASE_COURSES = {
    "clustering_and_descriptive_ai": course("clustering_and_descriptive_ai"),
    "uai_source-uai.1": course(
        "uai_source-uai.1",
        gpu="required",
        resources={"memory": {"limit": "8G", "guarantee": None}, "cpu": {"limit": None, "guarantee": None}},
    ),
    "mitxt-6.3710.3x": course("mitxt-6.3710.3x", gpu="optional"),
}


class Allowlist:
    """Writes the coursehub-allowlist ConfigMap as the operator would (CONTRACTS.md)."""

    def __init__(self, cluster, namespace):
        self.cluster, self.namespace = cluster, namespace

    def write(
        self, courses=None, *, on_unknown="default", default="clustering_and_descriptive_ai", limits=None
    ):
        doc = {
            "limits": limits,
            "version": 1,
            "hub": "learn",
            "default": default,
            "onUnknown": on_unknown,
            "gpu": GPU,
            "courses": courses if courses is not None else BASE_COURSES,
        }
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "coursehub-allowlist",
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "coursehub", "coursehub.dev/hub": "learn"},
            },
            "data": {"allowlist.json": json.dumps(doc, sort_keys=True, separators=(",", ":"))},
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(cm))


@pytest.fixture(scope="module")
def hub_namespace(cluster):
    name = "e2e-hub-spawn"
    cluster.kubectl("create", "namespace", name)
    # the hub takes gateway identity headers only from the proxy (here: loopback)
    proxy_stand_in_pod(cluster, name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def allowlist(cluster, hub_namespace):
    a = Allowlist(cluster, hub_namespace)
    a.write()
    return a


@pytest.fixture(scope="module")
def hub(jupyterhub_factory, cluster, hub_namespace, allowlist):
    hub = jupyterhub_factory(z2jh_values(), namespace=hub_namespace, kubeconfig=cluster.kubeconfig)
    yield hub
    hub.stop()


@pytest.fixture(autouse=True)
def reset_allowlist(request):
    if "allowlist" in request.fixturenames:
        request.getfixturevalue("allowlist").write()


def user_of(r):
    """The user a launch's redirect chain went to, or None."""
    for resp in [*r.history, r]:
        parts = urlparse(resp.url).path.split("/")
        for marker in ("spawn-pending", "user"):
            if marker in parts and parts.index(marker) + 1 < len(parts):
                return parts[parts.index(marker) + 1]
    return None


def launch(hub, headers=None, browser=None, **query):
    """Follow a launch link like a browser; returns (final response, username or None)."""
    browser = browser or hub.browser()
    r = browser.get(hub.url + "/hub/tmplogin?" + urlencode(query), headers=headers or {}, timeout=60)
    return r, user_of(r)


def confirmation_form(page):
    """(action, fields) of the GPU confirmation page's form, as a browser would submit it."""
    assert page.status_code == 200 and "coursehub-gpu-confirm" in page.text, page.text[:2000]
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page.text).group(1))
    hidden = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
    fields = {k: html.unescape(v) for k, v in hidden}
    assert fields.get("_xsrf")
    return action, fields


def launch_gpu(hub, headers=None, **query):
    """A GPU launch: the link's confirmation page, then its form POSTed (XSRF token included)."""
    browser = hub.browser()
    page = browser.get(hub.url + "/hub/tmplogin?" + urlencode(query), headers=headers or {}, timeout=60)
    action, fields = confirmation_form(page)
    r = browser.post(hub.url + action, data=fields, headers=headers or {}, timeout=60)
    return r, user_of(r)


def user_pod(cluster, namespace, user):
    """The pod KubeSpawner made for `user` (found by the env it gives the server)."""
    out = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
    for pod in json.loads(out)["items"]:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        if env.get("JUPYTERHUB_USER") == user:
            return pod
    return None


def launched_pod(hub, cluster, *, via=launch, headers=None, **query):
    r, user = via(hub, headers=headers, **query)
    assert r.status_code == 200, r.text[:2000]
    assert user, f"no user in redirect chain: {[x.url for x in [*r.history, r]]}"
    pod = wait_until(lambda: user_pod(cluster, hub.namespace, user), timeout=60, what=f"pod of {user}")
    return user, pod


def container(pod):
    return pod["spec"]["containers"][0]


def env_of(pod):
    return {e["name"]: e.get("value") for e in container(pod).get("env", [])}


def stop(hub, cluster, user):
    hub.stop_server(user)
    wait_until(
        lambda: user_pod(cluster, hub.namespace, user) is None, timeout=60, what=f"pod of {user} deleted"
    )


def assert_no_gpu(pod):
    affinity = (pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}
    assert GPU_KEY not in json.dumps(affinity)
    assert all(t.get("key") != GPU_KEY for t in pod["spec"].get("tolerations") or [])
    res = container(pod).get("resources") or {}
    assert "nvidia.com/gpu" not in (res.get("limits") or {}) and "nvidia.com/gpu" not in (
        res.get("requests") or {}
    )


def test_launch_link_creates_fresh_user_with_course_image_opened_at_notebook(hub, cluster):
    before = set(hub.users())
    user, pod = launched_pod(
        hub, cluster, course="clustering_and_descriptive_ai", notebook="week 1/intro.ipynb"
    )
    assert user not in before and user in hub.users()
    assert container(pod)["image"] == image_for("clustering_and_descriptive_ai")
    assert env_of(pod)["JUPYTERHUB_DEFAULT_URL"] == "/lab/tree/week%201/intro.ipynb"
    # hub defaults from singleuser values stay for a course without resources
    assert container(pod)["resources"]["limits"]["memory"] == str(4 * 1024**3)
    assert_no_gpu(pod)
    # the stand-in answers as the notebook server: the spawn finishes, the server is ready
    wait_until(lambda: (hub.server(user) or {}).get("ready"), timeout=120, what=f"{user}'s server ready")
    stop(hub, cluster, user)


def test_upper_case_slug_and_image_parameters(hub, cluster):
    user, pod = launched_pod(
        hub,
        cluster,
        course="MITXT-6.3710.3X",
        tag="latest",
        image="docker.io/evil/miner:latest",
        profile="x",
        notebook="../../etc/x.ipynb",
    )
    assert container(pod)["image"] == image_for("mitxt-6.3710.3x")
    assert "JUPYTERHUB_DEFAULT_URL" not in env_of(pod)  # the invalid notebook was ignored
    assert "ignoring invalid notebook" in hub.log_text()
    stop(hub, cluster, user)


def test_unknown_course_gets_default_image_under_default_policy(hub, cluster, allowlist):
    allowlist.write(on_unknown="default")
    user, pod = launched_pod(hub, cluster, course="no-such-course")
    assert container(pod)["image"] == image_for("clustering_and_descriptive_ai")
    stop(hub, cluster, user)


def test_unknown_course_is_refused_under_reject_policy(hub, cluster, allowlist):
    allowlist.write(on_unknown="reject")
    before = set(hub.users())
    # within the cache TTL the old policy may still apply; the change lands within 5 s
    r = wait_until(lambda: _refused(hub, "No-Such-Course"), timeout=5, what="reject policy to apply")
    assert r.status_code == 400
    assert "not offered" in r.text and "No-Such-Course" in r.text
    assert set(hub.users()) == before  # refused before a temporary user was created


class _Refusal:
    """A 4xx response made truthy for wait_until (a requests.Response is falsy then)."""

    def __init__(self, r):
        self.status_code, self.text = r.status_code, r.text


def _refused(hub, slug):
    r, user = launch(hub, course=slug)
    if r.status_code == 400:
        return _Refusal(r)
    if user:
        hub.stop_server(user)
    return None


def test_gpu_course_lands_on_gpu_node_and_others_do_not(hub, cluster):
    user, pod = launched_pod(hub, cluster, via=launch_gpu, course="uai_source-uai.1")
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms and all(
        {"key": GPU_KEY, "operator": "In", "values": [GPU_VALUE]} in t["matchExpressions"] for t in terms
    )
    assert GPU["tolerations"][0] in pod["spec"]["tolerations"]
    res = container(pod)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1" and res["requests"]["nvidia.com/gpu"] == "1"
    assert res["limits"]["memory"] == str(8 * 1024**3)  # the course's resources override the hub's
    node = wait_until(
        lambda: user_pod(cluster, hub.namespace, user)["spec"].get("nodeName"),
        timeout=60,
        what="GPU pod scheduled",
    )
    assert node == "kwok-gpu-0"
    stop(hub, cluster, user)

    user, pod = launched_pod(hub, cluster, course="mitxt-6.3710.3x")  # optional, not asked
    assert_no_gpu(pod)
    node = wait_until(
        lambda: user_pod(cluster, hub.namespace, user)["spec"].get("nodeName"),
        timeout=60,
        what="pod scheduled",
    )
    assert node != "kwok-gpu-0"
    stop(hub, cluster, user)

    user, pod = launched_pod(hub, cluster, via=launch_gpu, course="mitxt-6.3710.3x", gpu="1")  # asked
    assert container(pod)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    stop(hub, cluster, user)


def test_rest_api_user_options_cannot_pick_an_image(hub, cluster):
    name = "api-learner"
    assert hub.api("POST", f"/users/{name}").status_code in (201, 409)
    r = hub.api(
        "POST",
        f"/users/{name}/server",
        json={"course": "UAI_SOURCE-UAI.1", "image": "evil/x", "profile": "p", "notebook": "a.ipynb"},
    )
    assert r.status_code in (201, 202), r.text
    pod = wait_until(lambda: user_pod(cluster, hub.namespace, name), timeout=60, what="API-spawned pod")
    assert container(pod)["image"] == image_for("uai_source-uai.1")
    assert env_of(pod)["JUPYTERHUB_DEFAULT_URL"] == "/lab/tree/a.ipynb"
    stop(hub, cluster, name)


def test_course_added_then_removed_without_hub_restart(hub, cluster, allowlist):
    pid = hub.pid
    courses = dict(BASE_COURSES, **{"brand_new.101": course("Brand_New.101")})
    allowlist.write(courses, on_unknown="reject")
    # spec: a published course is spawnable within 5 s
    wait_until(
        lambda: launch_ok(hub, cluster, "brand_new.101", image_for("Brand_New.101")),
        timeout=5,
        what="new course spawnable",
        interval=0.5,
    )
    allowlist.write(BASE_COURSES, on_unknown="reject")
    wait_until(lambda: _refused(hub, "brand_new.101"), timeout=5, what="removed course refused", interval=0.5)
    assert hub.pid == pid and hub.process.poll() is None


def launch_ok(hub, cluster, slug, image):
    r, user = launch(hub, course=slug)
    if r.status_code != 200 or not user:
        return False
    pod = wait_until(lambda: user_pod(cluster, hub.namespace, user), timeout=60, what=f"pod of {user}")
    assert container(pod)["image"] == image
    stop(hub, cluster, user)
    return True


# ------------------------------------------------------- GPU confirmation, per-identity limits

ME = {"X-Forwarded-Email": "Learner@Example.edu", "X-Forwarded-User": "kc-1"}
ME_AGAIN = {"X-Forwarded-Email": "learner@example.edu"}  # the same person, other spelling
OTHER = {"X-Forwarded-Email": "someone.else@example.edu"}


def gated(**over):
    """A limits section as the operator writes it for a hub behind the gateway."""
    return {
        "activeServers": None,
        "serversPerIdentity": 1,
        "gpuServersPerIdentity": 1,
        "identity": "gateway",
        **over,
    }


def apply_gated_limits(hub, allowlist, **over):
    allowlist.write(limits=gated(**over))
    # Without an identity the gate refuses once the hub reads the new list; before,
    # a GPU link only shows its confirmation page, so the probe starts nothing.
    wait_until(
        lambda: launch(hub, course="uai_source-uai.1")[0].status_code == 403,
        timeout=5,
        what="the limits to reach the hub",
    )


def gpu_limit(pod):
    return (container(pod).get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")


def test_gpu_course_starts_only_from_a_confirmed_post(hub, cluster):
    before = set(hub.users())
    # a launch link's GET shows the confirmation page: no user, no server
    page = hub.browser().get(hub.url + "/hub/tmplogin?course=uai_source-uai.1", timeout=60)
    confirmation_form(page)
    assert "uai_source-uai.1" in page.text and set(hub.users()) == before
    # a POST without JupyterHub's XSRF token (a cross-site form) is refused
    r = hub.browser().post(hub.url + "/hub/tmplogin", data={"course": "uai_source-uai.1"}, timeout=60)
    assert r.status_code == 403 and set(hub.users()) == before

    # a learner already logged in: GET /hub/spawn?course=<GPU course> also only asks
    browser = hub.browser()
    browser.get(hub.url + "/hub/tmplogin?next=" + quote("/hub/home"), timeout=60).raise_for_status()
    (user,) = set(hub.users()) - before
    page = browser.get(hub.url + "/hub/spawn?course=uai_source-uai.1", timeout=60)
    action, fields = confirmation_form(page)
    assert hub.server(user) is None and user_pod(cluster, hub.namespace, user) is None
    # confirming (the form's POST, XSRF token included) starts the GPU server
    browser.post(hub.url + action, data=fields, timeout=60).raise_for_status()
    pod = wait_until(lambda: user_pod(cluster, hub.namespace, user), timeout=60, what=f"pod of {user}")
    assert gpu_limit(pod) == "1" and container(pod)["image"] == image_for("uai_source-uai.1")
    stop(hub, cluster, user)


def test_one_identity_over_its_limit_gets_a_page_naming_its_running_server(hub, cluster, allowlist):
    apply_gated_limits(hub, allowlist)
    mine = hub.browser()
    first, _ = launched_pod(hub, cluster, headers=ME, browser=mine, course="clustering_and_descriptive_ai")
    before = set(hub.users())

    r, second = launch(hub, headers=ME_AGAIN, browser=mine, course="mitxt-6.3710.3x")
    assert r.status_code == 429 and second is None, r.text[:2000]
    assert "clustering_and_descriptive_ai" in r.text and "the most one person may have" in r.text
    assert set(hub.users()) == before  # refused before a temporary user was made
    resume = html.unescape(re.search(r'href="([^"]*tmplogin\?resume=[^"]+)"', r.text).group(1))
    # the link takes this person's browser back to the running server, and nobody else:
    # not another identity, and not another browser claiming this identity (a learner's
    # pod can reach the hub directly with any X-Forwarded-Email)
    assert mine.get(hub.url + resume, headers=OTHER, timeout=60).status_code == 404
    assert hub.browser().get(hub.url + resume, headers=ME, timeout=60).status_code == 404
    back = mine.get(hub.url + resume, headers=ME, allow_redirects=False, timeout=60)
    assert back.status_code == 302 and back.headers["Location"].endswith(f"/user/{first}/")

    # another person is not held back by this one's server
    other, _ = launched_pod(hub, cluster, headers=OTHER, course="mitxt-6.3710.3x")
    # behind the gateway a request without an identity did not come through it
    r, nobody = launch(hub, course="clustering_and_descriptive_ai")
    assert r.status_code == 403 and nobody is None
    stop(hub, cluster, first)
    stop(hub, cluster, other)


def from_a_learner_pod(hub, path, headers, source="127.0.0.2"):
    """A request straight to the hub's port (as z2jh's hub NetworkPolicy lets a learner
    pod send one), from an address that is not the proxy's: (status, body)."""
    host, port = urlparse(hub.hub_api_url).hostname, urlparse(hub.hub_api_url).port
    conn = http.client.HTTPConnection(host, port, timeout=60, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def test_forged_identity_headers_from_a_learner_pod_are_refused(hub, cluster, allowlist):
    apply_gated_limits(hub, allowlist)
    before = set(hub.users())
    # an identity and the proxy's address, both claimed in headers
    forged = {**ME, "X-Forwarded-For": "127.0.0.1", "X-Real-Ip": "127.0.0.1"}
    for path in (
        "/hub/tmplogin?" + urlencode({"course": "clustering_and_descriptive_ai"}),
        "/hub/tmplogin?" + urlencode({"course": "uai_source-uai.1"}),  # a GPU course's confirmation
        "/hub/tmplogin?next=" + quote("/hub/home"),
    ):
        status, body = from_a_learner_pod(hub, path, forged)
        assert status == 403 and "Sign in through this hub" in body, (path, status, body[:500])
    assert set(hub.users()) == before  # no temporary user, so no server outside the limits
    assert "ignoring identity headers from 127.0.0.2: not the proxy" in hub.log_text()

    # the gateway's path (through the proxy) with the same headers works
    first, _ = launched_pod(hub, cluster, headers=ME, course="clustering_and_descriptive_ai")
    # and the identity's limit holds against the learner pod too: it cannot launch past it
    status, _ = from_a_learner_pod(hub, "/hub/tmplogin?course=mitxt-6.3710.3x", forged)
    assert status == 403 and set(hub.users()) == before | {first}
    stop(hub, cluster, first)


def test_active_servers_bounds_the_whole_hub(hub, cluster, allowlist):
    # no gateway: no identity, and still a hub-wide bound
    allowlist.write(limits={"activeServers": 1, "serversPerIdentity": None, "gpuServersPerIdentity": None})
    first, _ = launched_pod(hub, cluster, course="clustering_and_descriptive_ai")
    before = set(hub.users())
    # a GPU link shows only its confirmation page until the limit applies: the probe starts nothing
    wait_until(
        lambda: launch(hub, course="uai_source-uai.1")[0].status_code == 429,
        timeout=5,
        what="the hub-wide limit to apply",
    )
    r, second = launch(hub, course="mitxt-6.3710.3x")
    assert r.status_code == 429 and second is None and "at its limit of 1 running servers" in r.text
    assert set(hub.users()) == before  # refused before a temporary user was made
    stop(hub, cluster, first)


def _servers_of(hub, users):
    return {u: m["servers"][""] for u, m in hub.users().items() if u in users and m["servers"].get("")}


def test_rapid_launches_by_one_identity_start_at_most_the_limit(hub, cluster, allowlist):
    apply_gated_limits(hub, allowlist, serversPerIdentity=2, gpuServersPerIdentity=1)
    before = set(hub.users())
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: launch(hub, headers=ME, course="clustering_and_descriptive_ai"), range(8))
        )
    started = _servers_of(hub, set(hub.users()) - before)
    assert 1 <= len(started) <= 2, started
    assert sum(r.status_code == 429 for r, _ in results) >= 6
    for user in started:
        stop(hub, cluster, user)

    # 8 confirmed GPU launches at once: one GPU server
    apply_gated_limits(hub, allowlist, serversPerIdentity=8, gpuServersPerIdentity=1)
    forms = []
    for _ in range(8):
        browser = hub.browser()
        page = browser.get(hub.url + "/hub/tmplogin?course=uai_source-uai.1", headers=ME, timeout=60)
        forms.append((browser, *confirmation_form(page)))
    before = set(hub.users())
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda f: f[0].post(hub.url + f[1], data=f[2], headers=ME, timeout=60), forms)
        )
    started = _servers_of(hub, set(hub.users()) - before)
    assert len(started) == 1, started
    assert sum(r.status_code == 429 for r in results) == 7
    (user,) = started
    pod = wait_until(lambda: user_pod(cluster, hub.namespace, user), timeout=60, what=f"pod of {user}")
    assert gpu_limit(pod) == "1"
    # 13 refusals and the hub still runs: a refusal is not a failed spawn
    # (z2jh's consecutiveFailureLimit of 5 stops the hub after five of those in a row)
    assert hub.process.poll() is None
    stop(hub, cluster, user)


# ------------------------------------------------------------------------ culling


@pytest.fixture(scope="module")
def culling_hub(jupyterhub_factory, cluster, hub_namespace, allowlist):
    # z2jh's hub listens on its pod's port, so one host hub at a time: the module's other hub
    # goes (the culling test is the module's last).
    jupyterhub_factory.stop_all()
    # the fixture's stand-in answers as the server: it comes up, then goes idle
    values = z2jh_values(cull={"timeout": 4, "every": 2, "maxAge": 60, "users": True})
    hub = jupyterhub_factory(values, namespace=hub_namespace, kubeconfig=cluster.kubeconfig)
    yield hub
    hub.stop()


def test_idle_culler_culls_idle_servers_and_temporary_users(culling_hub, cluster):
    hub = culling_hub
    user, _ = launched_pod(hub, cluster, course="clustering_and_descriptive_ai")
    assert user in hub.users()
    # the server comes up, then is culled for inactivity, then its user
    wait_until(lambda: user_pod(cluster, hub.namespace, user) is None, timeout=120, what="idle server culled")
    wait_until(lambda: user not in hub.users(), timeout=120, what="temporary user culled")
    log = hub.log_text()
    # both deletions were the culler's, not a failed spawn's cleanup
    assert f"DELETE /hub/api/users/{user}/server (jupyterhub-idle-culler@" in log
    assert f"DELETE /hub/api/users/{user} (jupyterhub-idle-culler@" in log
