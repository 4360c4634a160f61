"""computemesh-agent register: add this machine to a provider organization with the one-time
code from the platform's Add a machine page.

    computemesh-agent register --code cmr_… --url https://computemesh.example

Detects the hardware, runs the benchmark, redeems the code (POST /api/v1/node-registrations/),
which creates the node and a draft offer, and saves the node's agent token where the agent
reads it (readable by this user only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from . import hardware

TOKEN_FILE = "token"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="computemesh-agent register", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code", required=True, help="the one-time code from the Add a machine page")
    p.add_argument("--url", required=True, help="the platform's URL, as the page shows it")
    p.add_argument("--name", default="", help="the node's name (default: this machine's host name)")
    p.add_argument("--workdir", type=Path, default=Path.home() / ".computemesh-agent",
                   help="where the agent keeps its token, datasets and checkpoints")
    args = p.parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        p.error(f"--url must be an http(s) URL, not {args.url!r}")
    return args


def save_token(workdir: Path, token: str) -> Path:
    """Write the token readable and writable by this user only (0600), replacing an older one."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / TOKEN_FILE
    tmp = path.with_name(TOKEN_FILE + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return path


def read_token(workdir: Path) -> str | None:
    path = workdir / TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"detail": exc.reason}


def main(argv: list[str]) -> int:
    args = parse(argv)
    server = args.url.rstrip("/")
    args.workdir.mkdir(parents=True, exist_ok=True)
    print("Detecting hardware …", flush=True)
    hw = hardware.detect(str(args.workdir))
    kind = (f"{hw['gpu_count']}× {hw['gpu_model']}" if hw["gpu_count"]
            else f"CPU node ({hw['cpu_cores']} cores; no GPU)")
    print(f"  {kind}, {hw['ram_gb']} GB RAM, {hw['disk_free_gb']} GB free disk", flush=True)
    tflops = hardware.benchmark_tflops()
    print(f"  benchmark: {tflops:.3f} TFLOP/s float32 matmul", flush=True)
    try:
        status, answer = _post(f"{server}/api/v1/node-registrations/",
                               {"code": args.code, "name": args.name, "hardware": hw,
                                "benchmark_tflops": tflops})
    except OSError as exc:
        print(f"✖ could not reach {server}: {exc}", file=sys.stderr)
        return 4
    if status != 201:
        detail = answer.get("detail") or json.dumps(answer)[:300]
        print(f"✖ the platform refused the registration ({status}): {detail}", file=sys.stderr)
        return 3
    path = save_token(args.workdir, answer["token"])
    node, offer = answer["node"], answer["offer"]
    print(f"✔ registered node #{node['id']} “{node['name']}” ({node['gpu_count']}× {node['gpu_model']}, "
          f"{node['region']}) for {node['provider']}")
    print(f"  agent token saved to {path} (readable by you only)")
    print(f"  draft offer #{offer['id']}: {offer['gpus_offered']} slots at {offer['price_per_gpu_hour']} "
          "tUSD/GPU-h suggested, not listed yet")
    print("Next:")
    workdir = "" if args.workdir == Path.home() / ".computemesh-agent" else f" --workdir {args.workdir}"
    print(f"  1. start the agent:  computemesh-agent --server {server}{workdir}")
    print("  2. on My offers, set the draft offer's price and publish it (Resume)")
    return 0
