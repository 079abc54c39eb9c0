"""Real nodes (issue 11): containers really run, from images built on this machine, and `down`
leaves the machine exactly as it was.

Starts its own dev cluster with two real nodes (one plain, one GPU node labelled and tainted
like production) beside the kwok nodes; needs root and scripts/install-system-deps.sh. Takes
the machine's real-node lock (realnodes.LOCK_PATH) for as long as its nodes run; run it under
the shared e2e lock like every e2e test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
import requests

from coursehub_dev import machine
from coursehub_dev.cluster import DevCluster
from coursehub_dev.realnodes import GPU_LABEL, GPU_RESOURCE, GPU_TAINT, HOST_IP, RealNodes, RealNodesBusy
from coursehub_dev.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.real_nodes,
    pytest.mark.skipif(os.geteuid() != 0, reason="real nodes need root (containerd, kubelet, bridges)"),
]


def _pod(name: str, image: str, node: str, *, command: list[str] | None = None, gpu: bool = False) -> dict:
    container: dict = {"name": "main", "image": image}
    if command:
        container["command"] = command
    if gpu:
        container["resources"] = {"limits": {GPU_RESOURCE: "1"}}
    spec: dict = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": [container],
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
    }
    if gpu:
        spec["tolerations"] = [{**GPU_TAINT, "operator": "Equal"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def _apply_and_wait(cluster: DevCluster, pod: dict) -> dict:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    cluster.kubectl("wait", "--for=condition=Ready", f"pod/{pod['metadata']['name']}", "--timeout=120s")
    return cluster.get(f"/api/v1/namespaces/default/pods/{pod['metadata']['name']}")


def test_real_nodes_run_local_images_and_down_restores_the_machine(tmp_path, capsys):
    before = machine.snapshot()
    # What a killed run leaves behind (its state dir gone): up removes it instead of failing on
    # "File exists" (a CI run once did, after an earlier run was stopped without `down`).
    subprocess.run(["ip", "link", "add", "chnode1", "type", "bridge"], check=True)
    cluster = DevCluster(state_dir=tmp_path / "state", real_nodes=2)
    started = time.monotonic()
    try:
        cluster.up()
        assert "removing the left-over bridge chnode1" in capsys.readouterr().out
        up_secs = time.monotonic() - started
        refs = json.loads((cluster.state_dir / "realnodes" / "images.json").read_text())

        # One real-node cluster per machine: a second one is refused, naming the holder.
        other = DevCluster(state_dir=tmp_path / "other")
        other.state_dir.mkdir()
        with pytest.raises(RealNodesBusy, match="already run on this machine.*" + str(cluster.state_dir)):
            RealNodes(other, 1)._take_lock()

        gpu = cluster.get("/api/v1/nodes/real-gpu-0")
        assert gpu["metadata"]["labels"][GPU_LABEL[0]] == GPU_LABEL[1]
        assert GPU_TAINT in gpu["spec"]["taints"]
        assert gpu["status"]["capacity"][GPU_RESOURCE] == "1"
        plain = cluster.get("/api/v1/nodes/real-node-0")
        assert GPU_LABEL[0] not in plain["metadata"]["labels"]
        assert plain["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")

        # The pause image, built here from pause.c, as a container of its own.
        t = time.monotonic()
        pause = _apply_and_wait(cluster, _pod("pause", refs["pause"], "real-node-0"))
        pause_secs = time.monotonic() - t
        assert pause["spec"]["nodeName"] == "real-node-0"
        assert refs["pause"].split("/")[0] in pause["status"]["containerStatuses"][0]["imageID"]

        # The Debian base built here, on the GPU node (toleration + nvidia.com/gpu request): a
        # token only this run knows comes back through the API server from the kubelet
        # (logs and exec use the API server's kubelet client certificate).
        token = uuid.uuid4().hex
        script = f"echo token={token}; . /etc/os-release; echo codename=$VERSION_CODENAME; exec sleep 3600"
        t = time.monotonic()
        base = _apply_and_wait(
            cluster, _pod("base", refs["base"], "real-gpu-0", command=["sh", "-c", script], gpu=True)
        )
        base_secs = time.monotonic() - t
        assert base["spec"]["nodeName"] == "real-gpu-0"
        logs = cluster.kubectl("logs", "pod/base").stdout
        assert f"token={token}" in logs.splitlines()
        assert "codename=bookworm" in logs.splitlines()
        exec_out = cluster.kubectl("exec", "pod/base", "--", "sh", "-c", f"echo exec-{token[:8]}").stdout
        assert exec_out.strip() == f"exec-{token[:8]}"
        pod_ip = base["status"]["podIP"]
        assert pod_ip.startswith("10.244."), pod_ip

        # From a pod: the API server through the default Service, by its cluster DNS name
        # (its serving certificate names the Service IP and the host bridge address), and the
        # local registry under the very name containerd pulls from (the image refs' host).
        version = cluster.get("/version")["gitVersion"]
        probe = "\n".join(
            [
                "import json, ssl, sys, urllib.request",
                "ctx = ssl.create_default_context(cafile='/tmp/ca.crt')",
                "v = urllib.request.urlopen('https://kubernetes.default.svc/version', context=ctx)",
                "print(json.load(v)['gitVersion'])",
                "c = urllib.request.urlopen(f'http://{sys.argv[1]}/v2/_catalog')",
                "print(' '.join(json.load(c)['repositories']))",
            ]
        )
        ca = (cluster.pki_dir / "ca.crt").read_text()
        cluster.kubectl("exec", "-i", "pod/base", "--", "sh", "-c", "cat > /tmp/ca.crt", input=ca)
        registry = refs["registry"]
        assert registry.split(":")[0] == HOST_IP
        seen = cluster.kubectl("exec", "pod/base", "--", "python3", "-c", probe, registry).stdout.split("\n")
        assert seen[0] == version
        assert "coursehub/pause" in seen[1].split()
        endpoints = cluster.get("/api/v1/namespaces/default/endpoints/kubernetes")
        assert endpoints["subsets"][0]["addresses"][0]["ip"] == HOST_IP

        # A course image from its repository (examples/courses-src/clustering), built here on
        # the base: JupyterLab answers on the pod's IP (the machine's own bridge), and the
        # version it reports is the one installed in the image, so nothing else answered.
        t = time.monotonic()
        course = RealNodes.image_builder(cluster.state_dir).course("clustering")
        course_build_secs = time.monotonic() - t
        lab_token = uuid.uuid4().hex
        lab = _pod(
            "lab",
            course,
            "real-node-0",
            command=["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"],
        )
        lab["metadata"]["labels"] = {"app": "lab"}
        lab["spec"]["containers"][0]["args"] = [f"--IdentityProvider.token={lab_token}"]
        lab["spec"]["containers"][0]["readinessProbe"] = {
            "httpGet": {"path": "/api", "port": 8888},
            "periodSeconds": 1,
        }
        t = time.monotonic()
        lab_pod = _apply_and_wait(cluster, lab)
        lab_secs = time.monotonic() - t
        installed = cluster.kubectl(
            "exec",
            "pod/lab",
            "--",
            "python",
            "-c",
            "import jupyter_server; print(jupyter_server.__version__)",
        ).stdout.strip()
        http = requests.Session()
        http.trust_env = False  # the pod's IP, directly: never a proxy
        url = f"http://{lab_pod['status']['podIP']}:8888"
        assert http.get(f"{url}/api", timeout=10).json()["version"] == installed
        assert http.get(f"{url}/api/contents", timeout=10).status_code == 403  # the token is needed
        contents = http.get(f"{url}/api/contents", params={"token": lab_token}, timeout=10).json()
        assert "intro.ipynb" in {c["name"] for c in contents["content"]}

        # kube-proxy: a ClusterIP Service reaches the lab from the machine and from the pod on
        # the other real node. A missed DNAT would go out of the default route to an egress
        # that answers anything: the version string tells who answered.
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "lab", "namespace": "default"},
            "spec": {"selector": {"app": "lab"}, "ports": [{"port": 80, "targetPort": 8888}]},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(service))
        cluster_ip = cluster.get("/api/v1/namespaces/default/services/lab")["spec"]["clusterIP"]

        def through_service() -> bool:
            # A new connection each time: one opened before kube-proxy's rules were in place
            # went to the egress and would be kept alive, answering every later request.
            fresh = requests.Session()
            fresh.trust_env = False
            try:
                return fresh.get(f"http://{cluster_ip}/api", timeout=2).json().get("version") == installed
            except (requests.RequestException, ValueError, AttributeError):
                return False

        try:
            wait_until(through_service, timeout=60, what=f"the lab through Service IP {cluster_ip}")
        except TimeoutError:
            rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
            pytest.fail(
                f"Service {cluster_ip} does not reach the lab; its rules:\n"
                + "\n".join(line for line in rules.splitlines() if cluster_ip in line or "KUBE-SEP" in line)
            )
        fetch = f"import json, urllib.request; print(json.load(urllib.request.urlopen('http://{cluster_ip}/api'))['version'])"
        from_pod = cluster.kubectl("exec", "pod/base", "--", "python3", "-c", fetch).stdout.strip()
        assert from_pod == installed
    finally:
        t = time.monotonic()
        cluster.down()
        down_secs = time.monotonic() - t

    after = machine.snapshot()
    assert before.differences(after) == []
    with capsys.disabled():
        print(
            f"\n[real-node timings] up (cluster + 2 real nodes) {up_secs:.1f}s, pause pod Ready "
            f"{pause_secs:.1f}s, base pod Ready {base_secs:.1f}s, course image {course_build_secs:.1f}s, "
            f"JupyterLab pod Ready {lab_secs:.1f}s, down {down_secs:.1f}s"
        )
