"""fake-gcs-server's filesystem backend, used by the large benchmarks: objects survive a restart."""

import pytest
import requests

from localstack.services import start_fake_gcs

pytestmark = pytest.mark.stack


def test_filesystem_backend_keeps_objects_across_a_restart(tmp_path, stack_owner):
    gcs = start_fake_gcs(tmp_path, backend="filesystem", owner=stack_owner)
    try:
        requests.post(f"{gcs.url}/storage/v1/b?project=p", json={"name": "fs-bkt"}, timeout=10).raise_for_status()
        requests.post(f"{gcs.url}/upload/storage/v1/b/fs-bkt/o", params={"uploadType": "media", "name": "a/b.dcm"},
                      data=b"DICM", timeout=10).raise_for_status()
        gcs.restart()
        kept = requests.get(f"{gcs.url}/storage/v1/b/fs-bkt/o/a%2Fb.dcm", params={"alt": "media"}, timeout=10)
        assert kept.status_code == 200 and kept.content == b"DICM"
    finally:
        gcs.stop()
    assert (tmp_path / "gcs-data" / "fs-bkt").is_dir()


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'memory' or 'filesystem'"):
        start_fake_gcs(tmp_path, backend="disk")
