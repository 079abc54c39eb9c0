"""Polling a private repository over ssh says what to fix (desired/build.py: git_failure), read
from what real ssh says: `git ls-remote` with the operator's ssh options (reconcile/build.py:
StrictHostKeyChecking=yes, the Secret's known_hosts only, BatchMode) against Debian's sshd
(tests/fixtures/git_ssh_server.py) on loopback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from coursehub.desired.build import git_failure
from fixtures.git_ssh_server import SSH_KEYGEN, GitSshServer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the test sshd runs as root")

SECRET = "course-git"


@pytest.fixture(scope="module")
def ssh(git_server, tmp_path_factory):
    git_server.create("ssh-course", {"Dockerfile": "FROM scratch\n"})
    server = GitSshServer(git_server.repos, tmp_path_factory.mktemp("git-ssh"))
    try:
        yield server
    finally:
        server.stop()


def ls_remote(tmp: Path, url: str, key: str | None, known_hosts: str) -> subprocess.CompletedProcess:
    """`git ls-remote` as the operator runs it (reconcile/build.py: ls_remote)."""
    hosts = tmp / "known_hosts"
    hosts.write_text(known_hosts)
    ssh = f"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={hosts}"
    if key is not None:
        path = tmp / "key"
        path.write_text(key)
        path.chmod(0o600)
        ssh = f"ssh -o BatchMode=yes -o IdentitiesOnly=yes -i {path} " + ssh.removeprefix(
            "ssh -o BatchMode=yes "
        )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "GIT_SSH_COMMAND": ssh, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        ["git", "ls-remote", "--", url, "main"], env=env, capture_output=True, text=True, timeout=30
    )


def test_the_deploy_key_and_the_servers_host_key_read_the_repository(ssh, git_server, tmp_path):
    res = ls_remote(tmp_path, ssh.url("ssh-course"), ssh.deploy_key("ssh-course"), ssh.known_hosts())
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == git_server.head("ssh-course")


def test_a_known_hosts_naming_another_key_fails_host_key_verification(ssh, tmp_path):
    key = ssh.deploy_key("ssh-course")
    res = ls_remote(tmp_path, ssh.url("ssh-course"), key, ssh.other_known_hosts())
    assert res.returncode != 0
    reason, message = git_failure(res.stderr, ssh.url("ssh-course"), SECRET)
    assert reason == "HostKeyVerificationFailed"
    assert "key 'known_hosts' of Secret course-git (spec.build.git.secretRef)" in message
    assert f"[127.0.0.1]:{ssh.port}" in message
    served = subprocess.run(
        [SSH_KEYGEN, "-l", "-f", str(ssh.root / "host_ed25519.pub")], capture_output=True, text=True
    ).stdout.split()[1]
    assert f"it sent ED25519 {served}" in message  # what to check against a fingerprint you trust
    assert key not in message


def test_a_known_hosts_without_the_server_says_which_key_is_missing(ssh, tmp_path):
    other = ssh.other_known_hosts().replace(f"[127.0.0.1]:{ssh.port}", "[127.0.0.2]:22")
    res = ls_remote(tmp_path, ssh.url("ssh-course"), ssh.deploy_key("ssh-course"), other)
    reason, message = git_failure(res.stderr, ssh.url("ssh-course"), SECRET)
    assert reason == "HostKeyVerificationFailed"
    assert f"has no ED25519 key for [127.0.0.1]:{ssh.port}" in message and "'known_hosts'" in message


def test_an_ssh_url_without_a_secret_names_the_field(ssh, tmp_path):
    res = ls_remote(tmp_path, ssh.url("ssh-course"), None, "")
    reason, message = git_failure(res.stderr, ssh.url("ssh-course"), None)
    assert reason == "HostKeyVerificationFailed"
    assert "needs spec.build.git.secretRef" in message and "'ssh-privatekey' and 'known_hosts'" in message


def test_a_key_the_server_does_not_know_is_unauthorized(ssh, tmp_path):
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True
    )
    stranger = (tmp_path / "stranger").read_text()
    res = ls_remote(tmp_path, ssh.url("ssh-course"), stranger, ssh.known_hosts())
    reason, message = git_failure(res.stderr, ssh.url("ssh-course"), SECRET)
    assert reason == "SourceUnauthorized"
    assert "'ssh-privatekey' of Secret course-git" in message and "deploy key" in message
    assert stranger not in message


def test_a_key_ssh_cannot_read_says_so(ssh, tmp_path):
    res = ls_remote(tmp_path, ssh.url("ssh-course"), "not a key\n", ssh.known_hosts())
    reason, message = git_failure(res.stderr, ssh.url("ssh-course"), SECRET)
    assert reason == "SourceUnauthorized"
    assert "is not a private key ssh can read" in message and "'ssh-privatekey'" in message


def test_a_deploy_key_reads_only_its_own_repository(ssh, git_server, tmp_path):
    git_server.create("ssh-other", {"Dockerfile": "FROM scratch\n"})
    res = ls_remote(tmp_path, ssh.url("ssh-other"), ssh.deploy_key("ssh-course"), ssh.known_hosts())
    assert res.returncode != 0 and "only git-upload-pack of ssh-course.git" in res.stderr
    _reason, message = git_failure(res.stderr, ssh.url("ssh-other"), SECRET)
    assert "only git-upload-pack of ssh-course.git" in message  # the server's words, not git's advice
