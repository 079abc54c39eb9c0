"""The SSO gate's cost to a launch (issue 15): what Keycloak and oauth2-proxy add to a learner's
launch link, measured in a real headless Chromium on this machine.

Parts: Keycloak 26 (realm olapps, tests/sso/olapps-realm.json) and oauth2-proxy v7.15.6 with
exactly the flags the operator renders (tests/fixtures/keycloak.py), in front of a loopback
upstream that answers at once, so the numbers are the gate's alone. Side by side in one run:
1. direct: the launch link straight to the upstream (no gate), the baseline;
2. existing session: the launch link through the gate with a signed-in session cookie;
3. fresh login: a browser without a session: launch link -> Keycloak's login page -> sign
   in -> back at the launch link (typing excluded: the form is filled, then the clock runs
   from the click to the upstream's page, plus the time to the login page).
p50 and p95 over --logins rounds each (10 by default); the extra latency is p50 minus the
direct p50. Nothing here asserts on time.

    flock /tmp/coursehub-e2e.lock uv run python bench/bench_sso.py [--logins 10]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures.browser import Browser  # noqa: E402
from fixtures.keycloak import CLIENT_ID, USERS, Gate, Keycloak, Upstream, gate_objects  # noqa: E402
from harness import fmt_s, log, percentile  # noqa: E402

LAUNCH = "/hub/tmplogin?course=clustering_and_descriptive_ai&notebook=intro.ipynb"


def wait_for(b: Browser, what, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if what(b):
                return
        except Exception:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"not reached within {timeout}s at {b.url}: {b.text()[:300]}")


def at_upstream(b: Browser) -> bool:
    return bool(b.find("#upstream")) and b.url.endswith(LAUNCH)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logins", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sso-"))
    # answers at once: the numbers are the gate's alone
    server = Upstream()
    upstream = server.url
    kc = Keycloak(work / "keycloak")
    kc.workdir.mkdir(parents=True)
    gate: Gate | None = None
    browsers: list[Browser] = []
    try:
        started = time.monotonic()
        kc.start()
        kc.wait_ready()
        log(f"Keycloak {kc.base_url} ready in {time.monotonic() - started:.1f} s (cold start, this run)")
        gate = Gate(
            work / "gate",
            gate_objects(kc),
            client_id=CLIENT_ID,
            client_secret=kc.client_secret,
            upstream=upstream,
        )
        gate.start()
        hosts = ("localhost", kc.host)

        def browser(name: str) -> Browser:
            b = Browser(work / "artifacts", allow_hosts=hosts, name=name)
            browsers.append(b)
            return b

        direct, session, fresh, to_login = [], [], [], []
        signed_in = browser("session")
        # warm-up: one login for the session browser, one direct load (first loads pay for the
        # browser's own start-up)
        signed_in.open(gate.url + LAUNCH)
        wait_for(signed_in, lambda b: b.find("#kc-form-login"))
        signed_in.find("#username")[0].send_keys("ada")
        signed_in.find("#password")[0].send_keys(USERS["ada"][0])
        signed_in.find("#kc-login")[0].click()
        wait_for(signed_in, at_upstream)
        signed_in.open(upstream + LAUNCH)
        for i in range(args.logins):
            t = time.monotonic()
            signed_in.open(upstream + LAUNCH)
            wait_for(signed_in, at_upstream)
            direct.append(time.monotonic() - t)
            t = time.monotonic()
            signed_in.open(gate.url + LAUNCH)
            wait_for(signed_in, at_upstream)
            session.append(time.monotonic() - t)
            # a fresh browser profile: no gate cookie, no Keycloak session
            b = browser(f"fresh-{i}")
            t = time.monotonic()
            b.open(gate.url + LAUNCH)
            wait_for(b, lambda b: b.find("#kc-form-login"))
            login_page = time.monotonic() - t
            b.find("#username")[0].send_keys("sam")
            b.find("#password")[0].send_keys(USERS["sam"][0])
            t = time.monotonic()
            b.find("#kc-login")[0].click()
            wait_for(b, at_upstream)
            fresh.append(login_page + time.monotonic() - t)
            to_login.append(login_page)
            b.close()
            browsers.remove(b)
        d50 = percentile(direct, 50)
        rows = [
            ("direct (no gate)", direct),
            ("existing session", session),
            ("fresh login", fresh),
            ("  of which: to the login page", to_login),
        ]
        print(f"\nSSO gate, {args.logins} launches each (headless Chromium, one machine, typing excluded)")
        print(f"{'path':32} {'p50':>9} {'p95':>9} {'extra p50':>10}")
        for name, xs in rows:
            extra = fmt_s(percentile(xs, 50) - d50) if not name.startswith("  ") else ""
            print(f"{name:32} {fmt_s(percentile(xs, 50)):>9} {fmt_s(percentile(xs, 95)):>9} {extra:>10}")
    finally:
        for b in browsers:
            b.close()
        if gate is not None:
            gate.stop()
        kc.stop()
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
