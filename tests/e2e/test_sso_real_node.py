"""The SSO gate as the operator runs it, on a real node in front of the real hub (issue 15).

Keycloak 26 (realm olapps) on the real-node bridge address, which the host's browser and the
gate's pods both reach; the operator's `coursehub-gateway` Deployment (oauth2-proxy v7.15.6,
built here) on a real node, serving https itself from a kubernetes.io/tls Secret
(`spec.gateway.tls.secretRef`) with a certificate for the hub's domain signed by a test CA;
z2jh 4.4.0's hub and proxy behind it. Headless Chromium resolves the domain to the gateway
Service's ClusterIP (this machine's kube-proxy routes it) and accepts exactly that
certificate (its SPKI pinned), so the rendered `https://<domain>/oauth2/callback` and Secure
cookies work unchanged. A PNG per step. docs/sso.md, "The tests".
"""

from __future__ import annotations

import base64
import html
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from requests.adapters import HTTPAdapter

from coursehub.desired.gateway import GATEWAY_NAME, gateway_selector
from coursehub_dev import pki
from fixtures.jupyterhub import wait_until
from fixtures.keycloak import ALLOWED_GROUPS, CLIENT_ID, USERS, Keycloak

pytestmark = [pytest.mark.e2e, pytest.mark.real_nodes]

DOMAIN = "hub.coursehub.test"
COURSE = "clustering"
NOTEBOOK = "intro.ipynb"
OIDC_SECRET = "learn-oidc"
TLS_SECRET = "learn-tls"
REAL_NODE_SELECTOR = {"coursehub.dev/real-node": "true"}
LAUNCH = f"https://{DOMAIN}/hub/tmplogin?" + urlencode({"course": COURSE, "notebook": NOTEBOOK})


class SsoHub:
    def __init__(self, rc, ns: str, kc: Keycloak, spki: str, cookie_secret: str, ca_file: Path):
        self.rc, self.ns, self.kc, self.spki, self.cookie_secret = rc, ns, kc, spki, cookie_secret
        self.ca_file = ca_file

    def gate_ip(self) -> str:
        return self.rc.cluster.get(f"/api/v1/namespaces/{self.ns}/services/{GATEWAY_NAME}")["spec"][
            "clusterIP"
        ]

    def browser(self, browser_factory, name: str):
        return browser_factory(
            allow_hosts=("localhost", self.kc.host),
            name=name,
            map_hosts={DOMAIN: self.gate_ip()},
            trust_spki=(self.spki,),
        )

    def deployment(self) -> dict:
        return self.rc.cluster.get(f"/apis/apps/v1/namespaces/{self.ns}/deployments/{GATEWAY_NAME}")

    def replica_sets(self) -> dict[str, str]:
        """pod-template-hash -> ReplicaSet name, of the gate's Deployment."""
        sel = ",".join(f"{k}={v}" for k, v in gateway_selector("hub").items())
        items = self.rc.cluster.get(
            f"/apis/apps/v1/namespaces/{self.ns}/replicasets?labelSelector={requests.utils.quote(sel)}"
        )["items"]
        return {rs["metadata"]["labels"]["pod-template-hash"]: rs["metadata"]["name"] for rs in items}

    def rolled_out(self) -> bool:
        d = self.deployment()
        st, want = d.get("status", {}), d["spec"]["replicas"]
        return (
            st.get("observedGeneration") == d["metadata"]["generation"]
            and st.get("updatedReplicas") == want
            and st.get("availableReplicas") == want
            and st.get("replicas") == want
        )

    def put_oidc_secret(self) -> None:
        self.rc.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": OIDC_SECRET, "namespace": self.ns},
                "stringData": {
                    "client_id": CLIENT_ID,
                    "client_secret": self.kc.client_secret,
                    "cookie_secret": self.cookie_secret,
                },
            }
        )


@pytest.fixture(scope="module")
def bridge_keycloak(real_cluster):
    """Keycloak on the host bridge address (real_cluster first: the address exists only then)."""
    host = real_cluster.registry.rpartition(":")[0]
    workdir = Path(tempfile.mkdtemp(prefix="coursehub-keycloak-bridge-"))
    kc = Keycloak(workdir, host=host)
    kc.start()
    try:
        kc.wait_ready()
        kc.allow_redirect(f"https://{DOMAIN}/oauth2/callback")
        yield kc
    finally:
        kc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def sso_hub(real_cluster, bridge_keycloak):
    rc, kc = real_cluster, bridge_keycloak
    ns = rc.namespace(f"sso-{secrets.token_hex(3)}")
    tls = pki.serving_certificate((DOMAIN,))
    ca_file = Path(tempfile.mkdtemp(prefix="coursehub-sso-ca-")) / "ca.crt"
    ca_file.write_bytes(tls["ca.crt"])
    hub = SsoHub(rc, ns, kc, tls["spki_sha256"].decode(), secrets.token_hex(16), ca_file)
    hub.put_oidc_secret()
    rc.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": TLS_SECRET, "namespace": ns},
            "data": {k: base64.b64encode(tls[k]).decode() for k in ("tls.crt", "tls.key")},
        }
    )
    rc.create_course(ns, COURSE)
    manifest = rc.hub_manifest(ns)
    spec = manifest["spec"]
    spec["domain"] = DOMAIN
    # The gate is the way in: tmp users behind it, the proxy's Service left ClusterIP (the
    # operator's rendering), one server per SSO identity.
    spec["auth"] = {"mode": "tmp"}
    spec["values"]["proxy"].pop("service", None)
    spec["limits"] = {"serversPerIdentity": 1}
    spec["gateway"] = {
        "oidc": {
            "issuerURL": kc.issuer,
            "secretRef": {"name": OIDC_SECRET},
            "allowedGroups": list(ALLOWED_GROUPS),
            "image": rc.builder.oauth2_proxy(),
        },
        "tls": {"secretRef": {"name": TLS_SECRET}},
        # the real nodes, not kwok's (which run no containers)
        "nodeSelector": REAL_NODE_SELECTOR,
    }
    rc.apply(manifest)
    rc.wait_course_published(ns, COURSE)
    rc.wait_hub_ready(ns)
    wait_until(hub.rolled_out, timeout=300, what="the gateway Deployment rolled out")
    yield hub
    rc.cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    shutil.rmtree(ca_file.parent, ignore_errors=True)


def on_keycloak_login(kc: Keycloak):
    return lambda b: (
        b.url.startswith(f"{kc.issuer}/protocol/openid-connect/auth") and b.find("#kc-form-login")
    )


def sign_in(b, kc: Keycloak, user: str, password: str | None = None) -> None:
    b.step("keycloak login page", on_keycloak_login(kc))
    b.find("#username")[0].send_keys(user)
    b.find("#password")[0].send_keys(password or USERS[user][0])
    b.find("#kc-login")[0].click()


def user_of(url: str) -> str | None:
    parts = urlsplit(url).path.split("/")
    for marker in ("user", "spawn-pending"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1]
    return None


def lab_state(b) -> dict:
    return b.driver.execute_script(
        """
        const dock = '#jp-main-dock-panel .lm-TabBar-tab';
        const current = document.querySelector(dock + '.lm-mod-current .lm-TabBar-tabLabel');
        const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
        return {current: current ? current.textContent : null, notebook: nb ? nb.innerText : ''};
        """
    )


def launch_to_lab(hub: SsoHub, b, user: str, password: str | None = None) -> str:
    """Launch link -> Keycloak -> back at the launch link -> tmp user -> JupyterLab with the
    course's notebook; the tmp user's name."""
    b.open(LAUNCH)
    sign_in(b, hub.kc, user, password)
    b.step("back at the launch link: a tmp user", lambda b: user_of(b.url), timeout=120)
    name = user_of(b.url)
    assert urlsplit(b.url).hostname == DOMAIN and urlsplit(b.url).scheme == "https", b.url
    b.step(
        "jupyterlab with the course notebook",
        lambda b: (s := lab_state(b))["current"] == NOTEBOOK and "k-means by hand" in s["notebook"],
        timeout=300,
    )
    return name


def limit_page(b) -> bool:
    return "the most one person may have on this hub" in b.text()


def test_launch_link_through_keycloak_to_jupyterlab_then_the_identity_limit(sso_hub, browser_factory):
    hub = sso_hub
    ada = hub.browser(browser_factory, "ada")
    user = launch_to_lab(hub, ada, "ada")
    pod = hub.rc.learner_pod(hub.ns, user)
    assert pod is not None and pod["spec"]["nodeName"].startswith("real-"), pod
    # The gate runs on real nodes, serving the test certificate (the browser pinned exactly it).
    sel = ",".join(f"{k}={v}" for k, v in gateway_selector("hub").items())
    gate_pods = hub.rc.cluster.get(
        f"/api/v1/namespaces/{hub.ns}/pods?labelSelector={requests.utils.quote(sel)}"
    )["items"]
    assert gate_pods and all(p["spec"]["nodeName"].startswith("real-") for p in gate_pods)

    # The same identity in another browser: signed in again, the hub counts ada's one server.
    again = hub.browser(browser_factory, "ada-again")
    again.open(LAUNCH)
    sign_in(again, hub.kc, "ada")
    again.step("the per-identity limit page", limit_page, timeout=120)
    assert f"tmplogin?resume={user}" in again.driver.page_source  # the link to the running server
    assert hub.rc.learner_pod(hub.ns, user)["metadata"]["uid"] == pod["metadata"]["uid"]


def test_rotating_the_client_secret_restarts_the_gate_once_and_login_works(sso_hub, browser_factory):
    hub = sso_hub
    before_rs = hub.replica_sets()
    before_gen = hub.deployment()["metadata"]["generation"]
    assert len(before_rs) == 1, before_rs
    hub.kc.rotate_client_secret()
    hub.put_oidc_secret()
    wait_until(
        lambda: len(hub.replica_sets()) > len(before_rs) and hub.rolled_out(),
        timeout=300,
        what="the gate rolled once for the rotated secret",
    )
    b = hub.browser(browser_factory, "after-rotation")
    b.open(LAUNCH)
    sign_in(b, hub.kc, "sam")
    b.step("signed in with the new secret: a tmp user", lambda b: user_of(b.url), timeout=120)
    b.step(
        "jupyterlab with the course notebook",
        lambda b: (s := lab_state(b))["current"] == NOTEBOOK and "k-means by hand" in s["notebook"],
        timeout=300,
    )
    after_rs = hub.replica_sets()
    assert len(after_rs) == len(before_rs) + 1 and set(before_rs) < set(after_rs), (before_rs, after_rs)
    assert hub.deployment()["metadata"]["generation"] == before_gen + 1


def add_learner(kc: Keycloak, username: str) -> str:
    """A new account in the learner group (its own identity, so a fresh server is allowed); its
    password. Gone when Keycloak restarts (in-memory database)."""
    password = secrets.token_urlsafe(12)
    r = kc._admin().post(
        f"{kc.base_url}/admin/realms/olapps/users",
        json={
            "username": username,
            "enabled": True,
            "email": f"{username}@learn.example.edu",
            "emailVerified": True,
            "firstName": username.title(),
            "lastName": "Learner",
            "groups": ["/learner"],
            "requiredActions": [],
            "credentials": [{"type": "password", "value": password, "temporary": False}],
        },
        timeout=10,
    )
    r.raise_for_status()
    return password


def click_menu(b, *labels: str) -> None:
    """JupyterLab's menu bar: click each label in turn (File, then Log Out)."""
    from selenium.webdriver.common.by import By

    for i, label in enumerate(labels):
        css = ".lm-MenuBar-itemLabel" if i == 0 else ".lm-Menu-itemLabel"
        b.step(
            f"menu {label}",
            lambda b, css=css, label=label: [e for e in b.find(css) if e.text.strip() == label],
            timeout=30,
        )
        (item,) = [e for e in b.driver.find_elements(By.CSS_SELECTOR, css) if e.text.strip() == label]
        item.click()


def test_hub_log_out_ends_the_gate_and_keycloak_sessions(sso_hub, browser_factory):
    hub = sso_hub
    password = add_learner(hub.kc, "lin")
    b = hub.browser(browser_factory, "lin")
    launch_to_lab(hub, b, "lin", password)
    # JupyterLab's File > Log Out -> /hub/logout -> the gate's sign-out -> Keycloak's session
    # ended: the gate sends the browser to Keycloak, which asks for the password (a live
    # Keycloak session would have sent it straight back signed in).
    click_menu(b, "File", "Log Out")
    b.step("signed out: keycloak asks for the password", on_keycloak_login(hub.kc), timeout=120)
    b.open(LAUNCH)
    b.step("the next launch asks for the password again", on_keycloak_login(hub.kc))


class GateAdapter(HTTPAdapter):
    """https://<domain>/ for requests: to the gate's ClusterIP, SNI and certificate check for the
    domain (verified against the test CA), Host: <domain>. Other hosts go as usual."""

    def __init__(self, ip: str):
        self.ip = ip
        super().__init__()

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params["host"] == DOMAIN:
            host_params["host"] = self.ip
            pool_kwargs["server_hostname"] = DOMAIN
            pool_kwargs["assert_hostname"] = DOMAIN
        return host_params, pool_kwargs

    def send(self, request, **kwargs):
        request.headers["Host"] = DOMAIN
        return super().send(request, **kwargs)


def gate_client(hub: SsoHub) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # the gate and Keycloak are on this machine's own interfaces
    s.verify = str(hub.ca_file)
    s.mount(f"https://{DOMAIN}/", GateAdapter(hub.gate_ip()))
    return s


def login_up_to_callback(hub: SsoHub, s: requests.Session, user: str) -> str:
    """The launch link and Keycloak's login form, in an HTTP client; the callback URL Keycloak
    redirects to, not followed."""
    url = LAUNCH
    for _ in range(5):
        r = s.get(url, allow_redirects=False, timeout=30)
        if r.status_code not in (301, 302, 303, 307):
            break
        url = requests.compat.urljoin(url, r.headers["Location"])
    assert url.startswith(f"{hub.kc.issuer}/protocol/openid-connect/auth"), (url, r.status_code, r.text[:500])
    form = re.search(r'<form[^>]*id="kc-form-login"[^>]*>', r.text)
    assert form, r.text[:2000]
    action_attr = re.search(r'action="([^"]+)"', form.group(0))
    assert action_attr, form.group(0)
    action = html.unescape(action_attr.group(1))
    r = s.post(
        action,
        data={"username": user, "password": USERS[user][0], "credentialId": ""},
        allow_redirects=False,
        timeout=30,
    )
    callback = r.headers.get("Location", "")
    assert r.status_code == 302 and callback.startswith(f"https://{DOMAIN}/oauth2/callback?"), (
        r.status_code,
        callback,
        r.text[:500],
    )
    assert "code=" in callback
    return callback


def restarts(pod: dict) -> list[int]:
    return [c["restartCount"] for c in pod["status"].get("containerStatuses", [])]


# Last in this module: it stops Keycloak (restarted afterwards, the realm re-imported).
def test_keycloak_down_mid_login_shows_the_gate_page_and_running_servers_go_on(sso_hub, browser_factory):
    hub = sso_hub
    password = add_learner(hub.kc, "kim")
    kim = hub.browser(browser_factory, "kim")
    user = launch_to_lab(hub, kim, "kim", password)
    pod = hub.rc.learner_pod(hub.ns, user)
    assert pod is not None and pod["spec"]["nodeName"].startswith("real-"), pod

    # sam's login, in an HTTP client, stops at the way back: Keycloak's redirect to the callback.
    s = gate_client(hub)
    callback = login_up_to_callback(hub, s, "sam")
    gate_cookies = [c for c in s.cookies if c.domain.lstrip(".") == DOMAIN]
    assert gate_cookies, list(s.cookies)  # the gate's CSRF cookie, which the callback must carry
    hub.kc.stop()
    try:
        # The gate cannot redeem the code at Keycloak: its own page says what is wrong.
        r = s.get(callback, allow_redirects=False, timeout=60)
        text = " ".join(r.text.split())
        assert r.status_code >= 500, (r.status_code, text[:1000])
        assert 'id="unavailable"' in r.text and "Sign-in is not available right now" in text, text[:1000]
        assert "Notebooks that are already running keep running" in text

        # The same page in a browser: sam's gate cookies moved over, the callback delivered again.
        sam = hub.browser(browser_factory, "sam-mid-login")
        sam.open(f"https://{DOMAIN}/ping")
        assert sam.text().strip() == "OK"  # the gate's own health answer
        for c in gate_cookies:
            sam.driver.add_cookie(
                {"name": c.name, "value": c.value, "path": c.path or "/", "secure": True, "httpOnly": True}
            )
        sam.open(callback)
        sam.step("keycloak down: the gate's sign-in is not available page", lambda b: b.find("#unavailable"))
        assert "Notebooks that are already running keep running" in " ".join(sam.text().split())

        # kim's server is untouched and still answers through the gate for her session.
        kim.driver.refresh()
        kim.step(
            "keycloak down: jupyterlab still works",
            lambda b: (st := lab_state(b))["current"] == NOTEBOOK and "k-means by hand" in st["notebook"],
            timeout=120,
        )
        assert urlsplit(kim.url).hostname == DOMAIN and user_of(kim.url) == user, kim.url
        now = hub.rc.learner_pod(hub.ns, user)
        assert now is not None and now["metadata"]["uid"] == pod["metadata"]["uid"]
        assert restarts(now) == restarts(pod), (restarts(pod), restarts(now))
    finally:
        hub.kc.start()
        hub.kc.wait_ready()
        hub.kc.allow_redirect(f"https://{DOMAIN}/oauth2/callback")
