"""Upload throughput of a dataset over loopback: the resumable, chunked upload
(`computemesh_client`'s `upload_dataset_resumable`, /api/v1/uploads/) against `curl` sending
the same file to the same server in one request (its baseline: one PATCH of the whole file,
the server's chunk limit raised for it), on daphne with the production settings.

Figures: MB/s of the chunks' transfer (PATCH phase), of the whole call (SHA-256 of the file
first, then chunks, then `finish`: the server's SHA-256 check and the encryption into
storage), and `curl`'s; the ratio client/curl. `--smoke` uses 32 MiB; the default 1 GiB.

    .venv/bin/python bench/upload_throughput.py [--mib 1024] [--chunk-mib 16] [--smoke]
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, configure_django, machine, report, table  # noqa: E402
from _platform import Platform  # noqa: E402

DB_URL = "postgres://postgres@127.0.0.1:5432/computemesh_bench_upload"


def make_zip(path: Path, mib: int) -> None:
    """A zip of incompressible 1 MiB entries, stored: what a folder of images looks like to
    the server (the archive checks read its directory only)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(mib):
            z.writestr(f"class{i % 4}/{i:05d}.bin", os.urandom(1_048_576))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="32 MiB, for tests")
    args = parser.parse_args()
    mib = 32 if args.smoke else args.mib
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed for the baseline")

    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
    configure_django(DB_URL)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from marketplace.models import Membership, Organization
    from marketplace.services.accounts import organization_create

    with connection.cursor() as cur:
        cur.execute("TRUNCATE marketplace_organization, auth_user CASCADE")
    org = organization_create(name="Bench uploads", kind=Organization.Kind.CONSUMER)
    user = get_user_model().objects.create_user(username="bench-uploader", password=None)
    Membership.objects.create(user=user, organization=org, role=Membership.Role.OWNER)
    token = Token.objects.create(user=user).key

    platform = Platform()
    # The baseline sends the whole file in one PATCH: the chunk limit must let it in.
    platform.env.update(UPLOAD_CHUNK_MAX_BYTES=str((mib + 1) * 1_048_576),
                        UPLOAD_MAX_BYTES=str((mib + 1) * 1_048_576 * 2),
                        ORG_STORAGE_QUOTA_BYTES=str(10 * (mib + 1) * 1_048_576))
    data = platform.tmp / "scans.zip"
    make_zip(data, mib)
    size = data.stat().st_size
    try:
        platform._spawn("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p",
                                   str(platform.port), "webapp.asgi:application"])
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(platform.base + "/api/v1/runtimes/", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"daphne did not start; see {platform.tmp}/daphne.log") from None
                time.sleep(0.3)
        sys.path.insert(0, str(ROOT / "client"))
        from computemesh_client import Client
        from computemesh_client.uploads import file_sha256

        client = Client(platform.base, token, timeout=600)
        # The SHA-256 alone (the call below computes it once more, first), then the call:
        # its chunks and its finish timed apart.
        t_sha = time.perf_counter()
        sha = file_sha256(data)
        sha_s = time.perf_counter() - t_sha
        started = time.perf_counter()
        marks: list[float] = []

        def progress(sent: int, total: int) -> None:
            if sent == 0 or not marks:
                marks.append(time.perf_counter())
            if sent == total:
                marks.append(time.perf_counter())

        client.upload_dataset_resumable(data, name="client.zip", chunk_size=args.chunk_mib << 20,
                                        progress=progress)
        done = time.perf_counter()
        chunks_s = marks[-1] - marks[0]
        # curl: the same bytes, one PATCH to a fresh upload on the same server.
        created = client._json("uploads_create", json={
            "purpose": "dataset", "name": "curl.zip", "size_bytes": size, "sha256": sha})
        t0 = time.perf_counter()
        # Streamed from stdin with its length (curl -T FILE would append the file's name to
        # the URL, and --data-binary @FILE reads all of it into memory first).
        with open(data, "rb") as stdin:
            subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-X", "PATCH",
                            "-H", f"Authorization: Token {token}",
                            "-H", "Content-Type: application/offset+octet-stream",
                            "-H", "Upload-Offset: 0", "-H", "Expect:",
                            "-H", f"Content-Length: {size}", "-H", "Transfer-Encoding:",
                            "-T", "-", f"{platform.base}/api/v1/uploads/{created['id']}/"],
                           stdin=stdin, check=True)
        curl_s = time.perf_counter() - t0
        client._json("uploads_finish", path_args={"id": created["id"]})
        client.close()
    finally:
        platform.stop()
        shutil.rmtree(platform.tmp, ignore_errors=True)
    mb = size / 1e6
    figures = {
        "bytes": size, "chunk_mib": args.chunk_mib,
        "client_chunks_mb_s": round(mb / chunks_s, 1),
        "client_whole_call_mb_s": round(mb / (done - started), 1),
        "client_sha256_s": round(sha_s, 2), "client_chunks_s": round(chunks_s, 2),
        "client_finish_s": round(done - marks[-1], 2),
        "client_vs_curl": round(curl_s / chunks_s, 3),
    }
    baseline = {"curl_mb_s": round(mb / curl_s, 1), "curl_s": round(curl_s, 2)}
    print(f"{machine()}; {mb:,.0f} MB over loopback to daphne")
    print(table(["", "seconds", "MB/s"], [
        ["client: chunks (PATCH phase)", f"{chunks_s:.2f}", figures["client_chunks_mb_s"]],
        ["client: SHA-256 of the file first", f"{sha_s:.2f}", ""],
        ["client: finish (server SHA-256 + encryption)", f"{done - marks[-1]:.2f}", ""],
        ["client: whole call", f"{done - started:.2f}", figures["client_whole_call_mb_s"]],
        ["curl: one PATCH of the whole file", f"{curl_s:.2f}", baseline["curl_mb_s"]],
    ]))
    print(f"client chunks vs curl: {figures['client_vs_curl']:.3f} of curl's throughput")
    report("upload_throughput", figures=figures, baseline=baseline, smoke=args.smoke)


if __name__ == "__main__":
    main()
