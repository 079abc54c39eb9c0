"""What a learner and course staff see, in a real browser (issue 11, part 6).

Headless Chromium (tests/fixtures/browser.py) against a real JupyterHub with coursehub's hub
module, PostgreSQL and configurable-http-proxy, pointed at the local control plane (kwok
nodes). kwok runs no containers, so the "user server" is a loopback endpoint that the test
switches on (``UserServerGate``): until then the learner's browser shows the spawn-pending
page; after, the hub sends it on to the server, which answers with a token of this run.
The last test runs the learner's path on real nodes (``real_cluster``: the operator in the
cluster, the z2jh chart's hub and proxy as pods, JupyterLab from the course image built here)
and asserts on JupyterLab's DOM: the notebook's tab is current and its cells are drawn. There
the learner is then made course staff as a platform engineer does (the hub's REST API with the
staff service's token, docs/hub-side.md) and sees the staff page list the courses, whose launch
link opens JupyterLab for a new learner.
A PNG per step lands in the test's artifacts directory (printed; see docs/testing.md).
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import threading
from urllib.parse import urlencode, urlparse

import pytest
import requests

from fixtures.browser import CHROMEDRIVER, SELENIUM_ENV
from fixtures.jupyterhub import wait_until, z2jh_values

pytestmark = pytest.mark.e2e

NAMESPACE = "e2e-browser"
STAFF_GROUP = "coursehub-staff"  # the default the hub module renders


def image_for(slug: str) -> str:
    return "registry.example/ol-course-notebooks@sha256:" + (slug.encode().hex() * 64)[:64]


COURSES = {
    "clustering_and_descriptive_ai": {
        "course": "clustering_and_descriptive_ai",
        "image": image_for("clustering_and_descriptive_ai"),
        "displayName": "Clustering and Descriptive AI",
        "gpu": "none",
        "defaultNotebook": "intro.ipynb",
    },
    "uai_source-uai.1": {
        "course": "uai_source-uai.1",
        "image": image_for("uai_source-uai.1"),
        "displayName": "Universal AI 1",
        "gpu": "required",
    },
}
GPU = {
    "nodeSelector": {"ol.mit.edu/gpu_node": "true"},
    "tolerations": [
        {"key": "ol.mit.edu/gpu_node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ],
}


def write_allowlist(cluster, courses=None, *, on_unknown="reject") -> None:
    """The coursehub-allowlist ConfigMap as the operator writes it (docs/CONTRACTS.md)."""
    doc = {
        "version": 1,
        "hub": "learn",
        "default": "clustering_and_descriptive_ai",
        "onUnknown": on_unknown,
        "gpu": GPU,
        "courses": COURSES if courses is None else courses,
    }
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "coursehub-allowlist", "namespace": NAMESPACE},
        "data": {"allowlist.json": json.dumps(doc, sort_keys=True)},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(cm))


class UserServerGate:
    """The loopback port where the hub finds every user server, closed until ``open()``.

    Open, it answers every request with ``token`` (who answered: this test's stand-in, not
    anything else on the way), enough for the hub's readiness check.
    """

    def __init__(self, port: int):
        self.port = port
        self.token = "coursehub-stand-in-" + secrets.token_hex(8)
        self.httpd: http.server.ThreadingHTTPServer | None = None

    def open(self) -> None:
        if self.httpd is not None:
            return
        token = self.token.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(b"<html><body><p id='stand-in'>" + token + b"</p></body></html>")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


@pytest.fixture(scope="module")
def browser_namespace(cluster):
    cluster.kubectl("create", "namespace", NAMESPACE)
    write_allowlist(cluster)
    yield NAMESPACE
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def gate():
    from coursehub_dev.waiting import free_port

    g = UserServerGate(free_port())
    yield g
    g.close()


@pytest.fixture(scope="module")
def hub(jupyterhub_factory, cluster, browser_namespace, gate):
    hub = jupyterhub_factory(
        z2jh_values(), namespace=browser_namespace, kubeconfig=cluster.kubeconfig, server_port=gate.port
    )
    yield hub
    hub.stop()  # the host hub binds :8081 as in its pod: the next module starts its own


@pytest.fixture
def launched(hub, gate, cluster):
    """Users whose servers the test started; stopped afterwards (the gate opened first, so no
    spawn is left pending), and the allowlist put back."""
    users: list[str] = []
    yield users
    gate.open()
    for user in users:
        hub.stop_server(user)
    gate.close()
    write_allowlist(cluster)


def user_in(url: str, marker: str) -> str | None:
    parts = urlparse(url).path.split("/")
    return (
        parts[parts.index(marker) + 1] if marker in parts and parts.index(marker) + 1 < len(parts) else None
    )


def user_pod(cluster, user: str) -> dict | None:
    out = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout
    for pod in json.loads(out)["items"]:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        if env.get("JUPYTERHUB_USER") == user:
            return pod
    return None


def test_the_browser_resolves_no_name_off_the_machine_and_selenium_manager_never_runs(browser_factory):
    """The resolver rule is what keeps a test's browser on the machine: a name it was not
    given does not resolve, even ``localhost``; an allowed address answers (with our token)."""
    from selenium.common.exceptions import WebDriverException

    gate = UserServerGate(_free_port())
    gate.open()
    try:
        b = browser_factory(allow_hosts=("127.0.0.1",))
        assert b.driver.service.path == CHROMEDRIVER
        for key, value in SELENIUM_ENV.items():
            assert os.environ[key] == value
        b.open(f"http://127.0.0.1:{gate.port}/")
        b.step("allowed address answers", lambda b: gate.token in b.text())
        with pytest.raises(WebDriverException, match="ERR_NAME_NOT_RESOLVED"):
            b.open(f"http://localhost:{gate.port}/")
    finally:
        gate.close()


def _free_port() -> int:
    from coursehub_dev.waiting import free_port

    return free_port()


def test_launch_link_shows_spawn_pending_then_the_server(hub, gate, cluster, browser, launched):
    link = hub.url + "/hub/tmplogin?" + urlencode({"course": "clustering_and_descriptive_ai"})
    browser.open(link)
    browser.step(
        "spawn pending",
        lambda b: user_in(b.url, "spawn-pending") and "Your server is starting up" in b.text(),
    )
    user = user_in(browser.url, "spawn-pending")
    launched.append(user)
    # the course's image on a pod of that user: the link's course, not a default
    pod = wait_until(lambda: user_pod(cluster, user), timeout=60, what=f"the pod of {user}")
    assert pod["spec"]["containers"][0]["image"] == image_for("clustering_and_descriptive_ai")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["JUPYTERHUB_DEFAULT_URL"] == "/lab/tree/intro.ipynb"

    gate.open()  # the "server" starts answering: the pending page moves on by itself
    browser.step(
        "user server",
        lambda b: user_in(b.url, "user") == user and gate.token in b.text(),
        timeout=120,
    )


def test_unknown_course_page_names_the_course_and_creates_no_user(hub, browser):
    before = set(hub.users())
    browser.open(hub.url + "/hub/tmplogin?" + urlencode({"course": "no_such_course-9.99"}))
    browser.step(
        "unknown course",
        lambda b: "The course 'no_such_course-9.99' is not offered on this hub." in b.text(),
    )
    assert "400" in browser.text()
    assert set(hub.users()) == before


def test_staff_page_for_staff_only_live_from_the_allowlist_with_working_links(
    hub, gate, cluster, browser, launched
):
    # A learner (a fresh tmp user, no server) is refused with a readable page.
    before = set(hub.users())
    browser.open(hub.url + "/hub/tmplogin?" + urlencode({"next": "/hub/courses"}))
    browser.step("learner is refused", lambda b: "This page is for course staff" in b.text())
    assert "403" in browser.text() and f"'{STAFF_GROUP}'" in browser.text()
    (learner,) = set(hub.users()) - before
    anonymous = requests.get(hub.url + "/hub/courses", timeout=30)  # no login: no page, and no new user
    assert anonymous.status_code == 403 and "This page is for course staff" in anonymous.text
    as_service = requests.get(  # an admin service's token is not a person (and not a page login)
        hub.url + "/hub/courses", headers={"Authorization": f"token {hub.admin_token}"}, timeout=30
    )
    assert as_service.status_code == 403 and "This page is for course staff" in as_service.text
    assert set(hub.users()) == before | {learner}

    # The same user in the staff group sees every offered course and its launch link.
    assert hub.api("POST", f"/groups/{STAFF_GROUP}").status_code in (201, 409)
    assert hub.api("POST", f"/groups/{STAFF_GROUP}/users", json={"users": [learner]}).status_code == 200
    browser.open(hub.url + "/hub/courses")
    browser.step("staff page", lambda b: len(b.find("tr.coursehub-course")) == 2)
    rows = {r.get_attribute("data-course"): r for r in browser.find("tr.coursehub-course")}
    assert set(rows) == {"clustering_and_descriptive_ai", "uai_source-uai.1"}
    assert "Universal AI 1" in rows["uai_source-uai.1"].text and "required" in rows["uai_source-uai.1"].text
    link = rows["clustering_and_descriptive_ai"].find_element("css selector", "a.coursehub-launch")
    assert link.get_attribute("href") == hub.url + "/hub/tmplogin?course=clustering_and_descriptive_ai"

    # A course published while the hub runs is listed on the next load: no restart.
    pid = hub.pid
    write_allowlist(
        cluster,
        {
            **COURSES,
            "mitxt-6.3710.3x": {
                "course": "mitxt-6.3710.3x",
                "image": image_for("mitxt-6.3710.3x"),
                "displayName": "MITx 6.3710.3x",
                "gpu": "none",
            },
        },
    )

    def listed(b):
        b.driver.refresh()
        return "mitxt-6.3710.3x" in [r.get_attribute("data-course") for r in b.find("tr.coursehub-course")]

    browser.step("newly published course listed", listed, timeout=30)
    assert hub.pid == pid

    # Its link works: a new learner, a pod with that course's image.
    new_link = browser.find('tr[data-course="mitxt-6.3710.3x"] a.coursehub-launch')[0]
    new_link.click()
    browser.step("launched from the staff page", lambda b: user_in(b.url, "spawn-pending"))
    user = user_in(browser.url, "spawn-pending")
    launched.append(user)
    assert user != learner
    pod = wait_until(lambda: user_pod(cluster, user), timeout=60, what=f"the pod of {user}")
    assert pod["spec"]["containers"][0]["image"] == image_for("mitxt-6.3710.3x")


# ------------------------------------------------------------------- on real nodes


def lab_state(b) -> dict:
    """What JupyterLab shows: the main area's tab labels, the current tab, and the rendered
    notebook's text (nothing but JupyterLab itself draws these)."""
    return b.driver.execute_script(
        """
        const dock = '#jp-main-dock-panel .lm-TabBar-tab';
        const labels = [...document.querySelectorAll(dock + ' .lm-TabBar-tabLabel')].map(e => e.textContent);
        const current = document.querySelector(dock + '.lm-mod-current .lm-TabBar-tabLabel');
        const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
        return {labels, current: current ? current.textContent : null, notebook: nb ? nb.innerText : ''};
        """
    )


@pytest.mark.real_nodes
def test_launch_link_opens_jupyterlab_with_the_course_notebook_on_a_real_node(
    real_cluster, real_namespace, browser_factory
):
    """The whole learner path on real parts: the operator publishes a course image built here,
    the z2jh chart's hub (a pod) takes the launch link, and a real node runs JupyterLab,
    which opens the course's notebook."""
    from coursehub_dev.stack import STAFF_SERVICE

    rc, ns = real_cluster, real_namespace
    rc.create_course(ns, "clustering")
    # Listed on the staff page only (not pre-pulled, not launched here: test_real_hub does that)
    rc.create_course(ns, "uai-1", gpu="required", pre_pull=False)
    rc.create_hub(ns)
    rc.wait_course_published(ns, "clustering")
    rc.wait_course_published(ns, "uai-1")
    rc.wait_hub_ready(ns)
    hub_url = rc.hub_url(ns)
    b = browser_factory(allow_hosts=(urlparse(hub_url).hostname, *("localhost", "127.0.0.1")))

    # An unknown course (this hub rejects unknown courses): a readable page naming it.
    b.open(rc.launch_url(ns, "no_such_course-9.99"))
    b.step("unknown course", lambda b: "The course 'no_such_course-9.99' is not offered" in b.text())

    # The launch link: tmp login, the spawn-pending page while the pod starts, then JupyterLab
    # with the notebook open. A pre-pulled pod can be Ready before the page draws, so the
    # first step is whichever of the two the browser shows first.
    b.open(rc.launch_url(ns, "clustering", notebook="intro.ipynb"))
    b.step(
        "spawn pending or lab",
        lambda b: (
            (user_in(b.url, "spawn-pending") and "Your server is starting up" in b.text())
            or user_in(b.url, "user")
        ),
        timeout=120,
    )
    state = b.step(
        "jupyterlab with the course notebook",
        lambda b: (
            (s := lab_state(b))["current"] == "intro.ipynb" and "k-means by hand" in s["notebook"] and s
        ),
        timeout=240,
    )
    assert "/lab/tree/intro.ipynb" in urlparse(b.url).path, b.url
    assert "intro.ipynb" in state["labels"]

    # The staff page exists in the chart's hub (the module loads through z2jh's own config),
    # and a learner gets its readable refusal.
    b.open(hub_url + "/hub/courses")
    b.step("staff page refuses a learner", lambda b: "This page is for course staff" in b.text())
    assert "403" in b.text() and f"'{STAFF_GROUP}'" in b.text()

    # The learner made staff as a platform engineer does: the user's name from the hub's Home
    # page (the 403 page links it; its navigation bar names the user), added to the staff group
    # with the staff service's token, which can do nothing else.
    b.open(hub_url + "/hub/home")
    b.step("home page names the user", lambda b: b.find("#login_widget span"))
    learner = b.find("#login_widget span")[0].get_attribute("textContent").strip()
    users = rc.hub_api(ns).get(f"{hub_url}/hub/api/users", timeout=10).json()
    assert [u["name"] for u in users] == [learner]  # the hub answered: the one learner of this hub
    staff_token = rc.hub_api(ns, STAFF_SERVICE)
    made_admin = staff_token.patch(f"{hub_url}/hub/api/users/{learner}", json={"admin": True}, timeout=10)
    assert made_admin.status_code == 403, made_admin.text
    r = rc.make_staff(ns, learner)
    assert r.status_code == 200 and r.json()["users"] == [learner], r.text
    b.open(hub_url + "/hub/courses")
    b.step("staff page on a real node", lambda b: len(b.find("tr.coursehub-course")) == 2)
    rows = {r.get_attribute("data-course"): r for r in b.find("tr.coursehub-course")}
    assert set(rows) == {"clustering", "uai-1"}
    assert "required" in rows["uai-1"].text and "intro.ipynb" in rows["clustering"].text
    link = rows["clustering"].find_element("css selector", "a.coursehub-launch")
    assert link.get_attribute("href") == rc.launch_url(ns, "clustering")

    # Its launch link works: a new learner, JupyterLab on a real node with the notebook open.
    link.click()
    b.step(
        "jupyterlab from the staff page",
        lambda b: (
            (user_in(b.url, "user") not in (None, learner))
            and (s := lab_state(b))["current"] == "intro.ipynb"
            and "k-means by hand" in s["notebook"]
        ),
        timeout=240,
    )
