"""The SSO gate on real parts: Keycloak 26 (realm olapps, tests/sso/olapps-realm.json) and
oauth2-proxy v7.15.6 running exactly the flags the operator renders (desired/gateway.py), with
a learner's headless Chromium (a PNG per step).

Here oauth2-proxy runs as a process on this machine in front of a loopback upstream that
shows what the gate forwarded (path, query and identity headers) and a token of this run, so
every assertion checks who answered. docs/sso.md describes the flow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from coursehub.desired.gateway import SIGN_OUT_PATH
from fixtures.keycloak import CLIENT_ID, USERS, Gate, Keycloak, Upstream, gate_objects

LAUNCH = "/hub/tmplogin?course=clustering_and_descriptive_ai&notebook=intro.ipynb"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    yield u
    u.close()


@pytest.fixture
def gate_factory(keycloak: Keycloak, upstream: Upstream, tmp_path: Path):
    started: list[Gate] = []

    def make(*, extra_args: tuple[str, ...] = (), **oidc) -> Gate:
        g = Gate(
            tmp_path / f"gate-{len(started)}",
            gate_objects(keycloak, **oidc),
            client_id=CLIENT_ID,
            client_secret=keycloak.client_secret,
            upstream=upstream.url,
            extra_args=extra_args,
        )
        g.start()
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


@pytest.fixture
def gate(gate_factory) -> Gate:
    return gate_factory()


def sso_hosts(kc: Keycloak) -> tuple[str, ...]:
    return ("localhost", urlsplit(kc.base_url).hostname or kc.host)


def on_keycloak_login(kc: Keycloak):
    return lambda b: (
        b.url.startswith(f"{kc.issuer}/protocol/openid-connect/auth") and b.find("#kc-form-login")
    )


def sign_in(b, kc: Keycloak, user: str) -> None:
    b.step("keycloak-login-page", on_keycloak_login(kc))
    b.find("#username")[0].send_keys(user)
    b.find("#password")[0].send_keys(USERS[user][0])
    b.find("#kc-login")[0].click()


def shows_upstream(upstream: Upstream, path: str):
    return lambda b: upstream.token in b.text() and b.url.endswith(path)


def login(browser_factory, kc: Keycloak, gate: Gate, upstream: Upstream, user: str = "ada", name: str = ""):
    b = browser_factory(allow_hosts=sso_hosts(kc), name=name or user)
    b.open(gate.url + LAUNCH)
    sign_in(b, kc, user)
    b.step("back-at-the-launch-link", shows_upstream(upstream, LAUNCH))
    return b


def session_cookies(b) -> dict[str, str]:
    """The gate's session cookie (split into _oauth2_proxy_0, _1... when large), not its CSRF
    cookie. Cookies are per host, not per port: Keycloak's page on the same address sees them."""
    return {
        c["name"]: c["value"]
        for c in b.driver.get_cookies()
        if c["name"] == "_oauth2_proxy" or c["name"].removeprefix("_oauth2_proxy_").isdigit()
    }


def test_launch_link_signs_in_through_keycloak_and_returns_to_the_same_link(
    keycloak, gate, upstream, browser_factory
):
    b = browser_factory(allow_hosts=sso_hosts(keycloak), name="ada")
    b.open(gate.url + LAUNCH)
    sign_in(b, keycloak, "ada")
    b.step("back-at-the-launch-link", shows_upstream(upstream, LAUNCH))
    # the same launch link, query and all, with the identity the hub limits by
    seen = upstream.last_for(LAUNCH)["headers"]
    assert seen["X-Forwarded-Email"] == "ada@learn.example.edu"
    assert seen["X-Forwarded-Preferred-Username"] == "ada"
    assert "learner" in seen["X-Forwarded-Groups"].split(",")
    # a browser cannot claim another identity through the gate: the gate's headers replace its own
    forged = requests.get(
        gate.url + "/whoami",
        cookies=session_cookies(b),
        headers={
            "X-Forwarded-Email": "someone@else.example.edu",
            "X-Forwarded-Preferred-Username": "mallory",
        },
        timeout=10,
    )
    assert upstream.token in forged.text
    seen = upstream.last_for("/whoami")["headers"]
    assert seen["X-Forwarded-Email"] == "ada@learn.example.edu"
    assert seen["X-Forwarded-Preferred-Username"] == "ada"


def test_scope_and_groups_come_without_a_groups_scope(keycloak, gate, upstream, browser_factory):
    """Keycloak would answer invalid_scope to a `groups` scope; staff pass by the mapper's claim."""
    b = login(browser_factory, keycloak, gate, upstream, user="sam")
    seen = upstream.last_for(LAUNCH)["headers"]
    assert seen["X-Forwarded-Email"] == "sam@learn.example.edu"
    assert "staff" in seen["X-Forwarded-Groups"].split(",")
    assert "invalid_scope" not in b.driver.page_source


def test_account_outside_the_allowed_groups_gets_a_readable_refusal(
    keycloak, gate, upstream, browser_factory
):
    b = browser_factory(allow_hosts=sso_hosts(keycloak), name="otto")
    b.open(gate.url + LAUNCH)
    sign_in(b, keycloak, "otto")
    b.step("refused", lambda b: b.find("#refused"))
    text = b.text()
    assert "This account may not use these notebooks" in text
    assert "ask your course staff" in text
    # otto's Keycloak session is still open (the gate kept none): the link ends it at Keycloak
    (link,) = b.find("#sign-out")
    assert link.get_attribute("href") == f"{keycloak.issuer}/protocol/openid-connect/logout"
    assert not [s for s in upstream.seen if "otto" in json.dumps(s)]  # nothing of otto's reached the hub


def test_sign_out_ends_the_gate_session_and_the_keycloak_session(keycloak, gate, upstream, browser_factory):
    b = login(browser_factory, keycloak, gate, upstream)
    assert session_cookies(b)
    b.open(gate.url + SIGN_OUT_PATH)
    # The gate's cookie is gone, and Keycloak asks for the password again instead of signing the
    # browser straight back in: its own session ended too (the backend logout).
    b.step("signed-out", lambda b: not session_cookies(b) and on_keycloak_login(keycloak)(b))
    b.open(gate.url + LAUNCH)
    b.step("launch-link-asks-for-login-again", on_keycloak_login(keycloak))
    assert upstream.token not in b.text()


def _set_enabled(kc: Keycloak, user: str, enabled: bool) -> None:
    s = kc._admin()
    admin = f"{kc.base_url}/admin/realms/olapps"
    (u,) = s.get(f"{admin}/users", params={"username": user, "exact": "true"}, timeout=10).json()
    s.put(f"{admin}/users/{u['id']}", json={"enabled": enabled}, timeout=10).raise_for_status()


def test_cookie_refresh_renews_sessions_and_locks_out_a_disabled_account(
    keycloak, gate_factory, upstream, browser_factory
):
    # The CRD's minimum refresh is 60 s; the mechanism is the same at 3 s (the last flag wins).
    gate = gate_factory(extra_args=("--cookie-refresh=3s",))
    ada = login(browser_factory, keycloak, gate, upstream, user="ada")
    sam = login(browser_factory, keycloak, gate, upstream, user="sam")
    before = session_cookies(ada)
    _set_enabled(keycloak, "sam", False)
    try:
        time.sleep(4)  # past the refresh period: the next request refreshes against Keycloak
        ada.open(gate.url + "/after-refresh")
        ada.step("ada-refreshed", shows_upstream(upstream, "/after-refresh"))
        assert session_cookies(ada) != before  # a renewed session cookie
        sam.open(gate.url + "/after-refresh-sam")
        sam.step("sam-disabled-is-sent-to-login", on_keycloak_login(keycloak))
        assert "/after-refresh-sam" not in [s["path"] for s in upstream.seen]
    finally:
        _set_enabled(keycloak, "sam", True)


def test_rotated_client_secret_old_gate_fails_new_gate_signs_in(
    keycloak, gate_factory, upstream, browser_factory
):
    old = gate_factory()
    keycloak.rotate_client_secret()
    b = browser_factory(allow_hosts=sso_hosts(keycloak), name="old-secret")
    b.open(old.url + LAUNCH)
    sign_in(b, keycloak, "ada")
    b.step("old-secret-refused", lambda b: b.find("#unavailable"))
    new = gate_factory()  # the restarted gate reads the rotated Secret
    login(browser_factory, keycloak, new, upstream, name="new-secret")
