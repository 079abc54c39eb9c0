"""spec.chart.path names a chart directory or a packaged chart (.tgz), as the z2jh chart is published."""

import io
import tarfile

import pytest

from coursehub.helm import ReleaseFailed, _read_local_chart
from coursehub_dev.paths import Z2JH_CHART


def test_packaged_z2jh_chart_is_read_from_its_archive():
    meta = _read_local_chart(str(Z2JH_CHART))
    assert (meta.name, meta.version) == ("jupyterhub", "4.4.0")


def test_an_archive_without_a_chart_names_the_fix(tmp_path):
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        data = b"hello"
        info = tarfile.TarInfo("x/README")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ReleaseFailed, match=r"not a packaged chart \(a \.tgz with <name>/Chart\.yaml\)"):
        _read_local_chart(str(bad))


def test_a_missing_path_is_chart_not_found(tmp_path):
    with pytest.raises(ReleaseFailed, match="no chart at"):
        _read_local_chart(str(tmp_path / "nothing"))


def test_helm_in_a_pod_gets_a_kubeconfig_for_the_in_cluster_api_server(tmp_path):
    # helm with --kube-as-user ignores the in-cluster config and would talk to localhost:8080.
    from coursehub.helm import in_cluster_kubeconfig

    (tmp_path / "token").write_text("t")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = in_cluster_kubeconfig(env, tmp_path)
    assert config["clusters"][0]["cluster"] == {
        "server": "https://10.0.0.1:443",
        "certificate-authority": str(tmp_path / "ca.crt"),
    }
    assert config["users"][0]["user"] == {"tokenFile": str(tmp_path / "token")}
    assert in_cluster_kubeconfig({}, tmp_path) is None
    assert in_cluster_kubeconfig(env, tmp_path / "elsewhere") is None
