"""What keeping the demo's chain on disk costs: transactions per second of the embedded
chain in memory and on disk (`marketplace/chain/persist.py`), in process and served over
JSON-RPC as `make demo` serves it, and how long reopening a chain takes.

    .venv/bin/python bench/devchain_disk.py [--n 300] [--smoke]

Each transaction is an ether transfer from eth-tester's first account (one block each, as
eth-tester mines); `--smoke` sends 5 per case and only checks that every case runs. The
baseline is the chain in memory, in the same run.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)

import django  # noqa: E402

django.setup()

from _common import git_revision, machine, report, table  # noqa: E402
from web3 import Web3  # noqa: E402

from marketplace.chain import devchain  # noqa: E402
from marketplace.chain.client import _LockedTesterProvider  # noqa: E402
from marketplace.chain.persist import PersistentTesterProvider  # noqa: E402


def transfers_per_s(w3: Web3, n: int) -> float:
    sender, to = w3.eth.accounts[0], w3.eth.accounts[1]
    start = time.perf_counter()
    for _ in range(n):
        w3.eth.send_transaction({"from": sender, "to": to, "value": 1})
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    n = 5 if args.smoke else args.n
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(["in process, memory", f"{transfers_per_s(Web3(_LockedTesterProvider()), n):.0f}"])
        disk = PersistentTesterProvider(Path(tmp) / "a")
        rows.append(["in process, disk", f"{transfers_per_s(Web3(disk), n):.0f}"])
        disk.close()
        start = time.perf_counter()
        reopened = PersistentTesterProvider(Path(tmp) / "a")
        head = Web3(reopened).eth.block_number
        reopen_ms = (time.perf_counter() - start) * 1000
        reopened.close()
        assert head == n, (head, n)
        for name, folder in (("JSON-RPC, memory", None), ("JSON-RPC, disk", Path(tmp) / "b")):
            server, url = devchain.serve(folder=folder)
            try:
                rows.append([name, f"{transfers_per_s(Web3(Web3.HTTPProvider(url)), n):.0f}"])
            finally:
                server.close()
    print(f"devchain on disk: {n} transfers per case; {machine()}; {git_revision()}")
    print(table(["chain", "transactions/s"], rows))
    print(f"reopening a chain of {n} blocks: {reopen_ms:.0f} ms")
    figures = {name: float(tps) for name, tps in rows}
    report("devchain_disk", smoke=args.smoke,
           baseline={k: figures.pop(k) for k in ("in process, memory", "JSON-RPC, memory")},
           figures={**figures, "reopen_ms": reopen_ms})


if __name__ == "__main__":
    main()
