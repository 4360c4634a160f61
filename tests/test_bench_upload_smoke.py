"""bench/upload_throughput.py's --smoke run (32 MiB over loopback: the resumable client's
chunks against curl sending the same file in one request to the same daphne), with the
harness of tests/test_bench_smoke.py (a database and a redis-server of its own)."""

import shutil

import pytest

from .test_bench_smoke import bench_env, run_smoke  # noqa: F401  (bench_env is a fixture)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the baseline is curl")
def test_upload_throughput_smoke(bench_env, tmp_path):  # noqa: F811
    r = run_smoke("upload_throughput", bench_env, tmp_path, timeout=300)
    f = r["figures"]
    assert f["bytes"] > 32 * 1_048_576 and f["client_chunks_mb_s"] > 0, r
    assert r["baseline"]["curl_mb_s"] > 0 and f["client_vs_curl"] > 0, r
