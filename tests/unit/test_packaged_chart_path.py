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
