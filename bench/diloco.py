"""DiLoCo against DDP across emulated wide-area links (issue 7).

    .venv/bin/python bench/diloco.py [--steps 300] [--nodes 2 4] [--svg docs/diloco.svg]
    .venv/bin/python bench/diloco.py --smoke   # 2 nodes, DDP 25 steps, DiLoCo H=10 fp32 only

Reference task: the image-classifier template on its bundled `digits` sample with the
template's default hyper-parameters (a small CNN, 21,386 parameters; batch 64 per node;
Adam 1e-3), one training process per node. Every node is a network namespace behind a
100 Mbit/s `tc tbf` link (both directions), made and removed by this script
(tests/netns.py); the training runtime is the real one (workers/training/run.py under
torch.distributed.run), DDP with gloo across the namespaces, DiLoCo as the agent starts
it (one standalone group per node; outer synchronisation between the node leaders, a
reduce-scatter and an all-gather of pseudo-gradient chunks coordinated by node rank 0).

For 2 and 4 nodes:
1. DDP for N steps; its evaluation loss (held-out cross-entropy) at step N is the target.
2. DiLoCo for up to 2N steps for H in {10, 50, 100} and each wire precision; the first
   outer step whose global model reaches the target.
Reported: bytes each node sends to get there (node rank 0, the node that sends the most
and the mean over nodes; exact payload counts from the runtime; DDP's are the ring all-reduce
computed, 2·(n−1)/n of the fp32 gradients per step), the bytes measured on the links over
the whole run (IP packets with headers, heartbeats, rendezvous), and the wall-clock time
to the target over the emulated link plus the latency this kernel cannot emulate (no
netem), added by model: RTT × rounds of synchronisation, where a DDP step is a ring
all-reduce (2·(n−1) one-way hops = (n−1) round trips) and a DiLoCo outer step is two
round trips (DILOCO_RTTS: the reduce-scatter and the all-gather, one one-way hop each, then
the report to node rank 0 and its verdict).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import git_revision, machine, report  # noqa: E402

from tests.netns import Hosts  # noqa: E402
from workers.agent import launcher  # noqa: E402

TEMPLATE, SAMPLE = "image-classifier", "digits"
INNER = (10, 50, 100)
PRECISIONS = ("fp32", "fp16", "int8")
_ports = iter(range(29517, 29999))
DILOCO_RTTS = 2  # round trips of synchronisation per DiLoCo outer step (see above)


def params() -> dict:
    catalogue = json.loads((ROOT / "workers" / "training" / "catalogue.json").read_text())
    (t,) = [t for t in catalogue["templates"] if t["name"] == TEMPLATE]
    return {k: v["default"] for k, v in t["params"]["properties"].items()} | {"epochs": 200}


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(hosts: Hosts, n: int, *, sync: dict, steps: int, work: Path, eval_every: int) -> dict:
    """One training run over n namespaces; returns node 0's events, every node's outer
    events and the bytes each namespace sent on its link."""
    work.mkdir(parents=True)
    diloco = sync["mode"] == "diloco"
    env = launcher.environment(threads=1)
    env["GLOO_SOCKET_IFNAME"] = "eth0" if not diloco else "lo"
    procs = []
    port = next(_ports)  # a fresh one per run: no waiting for the last run's sockets
    before = [hosts.tx_bytes(i) for i in range(n)]
    for i in range(n):
        wd = work / f"node{i}"
        wd.mkdir()
        spec = {"template": TEMPLATE, "params": params(), "dataset": {"kind": "sample", "name": SAMPLE},
                "workdir": str(wd), "backend": "gloo", "resume_from": None, "pg_timeout_s": 120,
                "sync": sync, "nnodes": n, "node_rank": i, "max_steps": steps,
                "report_every": steps, "eval_every": eval_every}
        if diloco:
            spec.update(outer={"host": hosts.addr(0), "port": port}, member=f"bench-{i}", peer_timeout_s=30,
                        advertise_host=hosts.addr(i))
        (wd / "spec.json").write_text(json.dumps(spec))
        cmd = launcher.command(spec_path=wd / "spec.json", nnodes=n, node_rank=i, nproc_per_node=1,
                               master_addr=hosts.addr(0), master_port=port, standalone=diloco)
        log = open(wd / "out.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen([*hosts.prefix(i), *cmd], env=env, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    try:
        for p in procs:
            p.wait(timeout=1800)
    finally:
        for i in range(n):
            hosts.kill_all(i)
    sent = [hosts.tx_bytes(i) - before[i] for i in range(n)]
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        tail = (work / f"node{failed[0]}" / "out.log").read_text()[-3000:]
        raise RuntimeError(f"node {failed[0]} exited with {procs[failed[0]].returncode}:\n{tail}")
    return {"node0": events(work / "node0" / "events.jsonl"),
            "outer": [[e for e in events(work / f"node{i}" / "events.jsonl") if e["type"] == "outer"]
                      for i in range(n)],
            "link_bytes": sent}


def curve(result: dict) -> list[dict]:
    """Evaluation points of node 0: step, loss, bytes, training seconds (evaluation excluded)."""
    started = next(e["at"] for e in result["node0"] if e["type"] == "started")
    return [{"step": e["step"], "loss": e["loss"], "bytes": e.get("comm_bytes", 0),
             "bytes_ddp": e.get("comm_bytes_ddp", 0), "seconds": e["at"] - started - e["eval_s"]}
            for e in result["node0"] if e["type"] == "eval"]


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def bench(hosts: Hosts, n: int, steps: int, rtt: float, work: Path, inners=INNER,
          precisions=PRECISIONS) -> dict:
    print(f"\n## {n} nodes, DDP for {steps} steps, DiLoCo up to {2 * steps}", flush=True)
    ddp = run(hosts, n, sync={"mode": "ddp"}, steps=steps, work=work / f"n{n}-ddp", eval_every=25)
    ddp_curve = curve(ddp)
    at_n = next(p for p in ddp_curve if p["step"] == steps)
    target = at_n["loss"]
    ddp_rounds = steps * (n - 1)  # round trips: a ring all-reduce per step
    row_ddp = {"config": "DDP", "step": steps, "loss": target, "bytes_rank0": at_n["bytes"],
               "bytes_mean": at_n["bytes"], "link_bytes_max": max(ddp["link_bytes"]),
               "seconds": at_n["seconds"], "latency_s": ddp_rounds * rtt,
               "curve": ddp_curve}
    print(f"DDP: evaluation loss {target:.4f} at step {steps}; {fmt_bytes(at_n['bytes'])} per node; "
          f"{at_n['seconds']:.1f} s measured + {ddp_rounds * rtt:.1f} s latency by model", flush=True)
    rows = [row_ddp]
    for inner in inners:
        for precision in precisions:
            sync = {"mode": "diloco", "inner_steps": inner, "outer_lr": 0.7, "outer_momentum": 0.9,
                    "precision": precision}
            res = run(hosts, n, sync=sync, steps=2 * steps, work=work / f"n{n}-h{inner}-{precision}",
                      eval_every=1)
            points = curve(res)
            hit = next((p for p in points if p["loss"] <= target), None)
            row = {"config": f"DiLoCo H={inner} {precision}", "inner": inner, "precision": precision,
                   "curve": points, "link_bytes_max": max(res["link_bytes"]),
                   "best_loss": min(p["loss"] for p in points)}
            if hit is not None:
                rounds = -(-hit["step"] // inner)
                per_node = [next((e["comm_bytes"] for e in outer if e["step"] == hit["step"]), None)
                            for outer in res["outer"]]
                known = [b for b in per_node if b is not None]
                row.update(step=hit["step"], loss=hit["loss"], bytes_rank0=hit["bytes"],
                           bytes_mean=sum(known) / len(known), bytes_max=max(known), seconds=hit["seconds"],
                           latency_s=DILOCO_RTTS * rounds * rtt, per_node=per_node)
            rows.append(row)
            if hit is None:
                print(f"{row['config']}: target not reached in {2 * steps} steps "
                      f"(best {row['best_loss']:.4f})", flush=True)
            else:
                print(f"{row['config']}: loss {hit['loss']:.4f} at step {hit['step']}; rank 0 sent "
                      f"{fmt_bytes(hit['bytes'])} ({at_n['bytes'] / max(1, hit['bytes']):,.0f}× less than "
                      f"DDP), mean {fmt_bytes(row['bytes_mean'])}; {hit['seconds']:.1f} s + "
                      f"{row['latency_s']:.1f} s latency by model", flush=True)
    return {"nodes": n, "steps": steps, "target": target, "rows": rows}


def speed(ratio: float) -> str:
    return f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"


def table(result: dict, rtt_ms: float) -> str:
    ddp = result["rows"][0]
    ddp_total = ddp["seconds"] + ddp["latency_s"]
    lines = [
        f"| {result['nodes']} nodes | step reached | eval loss | bytes sent, rank 0 | bytes sent, "
        f"node that sent most | bytes sent, mean per node | × fewer than DDP (node that sent most) | "
        f"link bytes, busiest node, whole run | wall clock measured | + {rtt_ms:.0f} ms RTT by model "
        f"| total | vs DDP |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result["rows"]:
        if "step" not in r:
            lines.append(f"| {r['config']} | not within {2 * result['steps']} | best {r['best_loss']:.4f} "
                         f"| | | | | {fmt_bytes(r['link_bytes_max'])} | | | | |")
            continue
        total = r["seconds"] + r["latency_s"]
        most = r.get("bytes_max", r["bytes_rank0"])  # DDP: every node sends the same
        factor = ddp["bytes_rank0"] / most if most else float("inf")
        lines.append(
            f"| {r['config']} | {r['step']} | {r['loss']:.4f} | {fmt_bytes(r['bytes_rank0'])} | "
            f"{fmt_bytes(most)} | {fmt_bytes(r['bytes_mean'])} | {'—' if r is ddp else f'{factor:,.0f}×'} | "
            f"{fmt_bytes(r['link_bytes_max'])} | {r['seconds']:.1f} s | {r['latency_s']:.1f} s | "
            f"{total:.1f} s | {'—' if r is ddp else speed(ddp_total / total)} |")
    return "\n".join(lines)


# --- the plot (an SVG written by hand: matplotlib is not in the environment) --------------
COLORS = {"DDP": "#111827", 10: "#0f766e", 50: "#2563eb", 100: "#c026d3"}
DASH = {"fp32": "", "fp16": "6 3", "int8": "2 3"}


def svg(results: list[dict], path: Path, rtt: float) -> None:
    import math

    w, h, pad = 460, 300, 52
    panels = []
    for row_i, result in enumerate(results):
        for col, (key, label, logx) in enumerate([("bytes", "bytes sent by node rank 0 (log)", True),
                                                  ("time", "seconds incl. latency by model", False)]):
            x0, y0 = 20 + col * (w + 30), 40 + row_i * (h + 60)
            series = []
            for r in result["rows"]:
                pts = []
                for p in r["curve"]:
                    if key == "bytes":
                        x = p["bytes"]
                    else:
                        rounds = p["step"] * (result["nodes"] - 1) if r["config"] == "DDP" else \
                            DILOCO_RTTS * -(-p["step"] // r["inner"])
                        x = p["seconds"] + rounds * rtt
                    if x > 0:  # (a log axis has no 0)
                        pts.append((x, p["loss"]))
                color = COLORS["DDP"] if r["config"] == "DDP" else COLORS[r["inner"]]
                dash = "" if r["config"] == "DDP" else DASH[r["precision"]]
                series.append((r["config"], pts, color, dash, 2.4 if r["config"] == "DDP" else 1.4))
            xs = [x for _, pts, *_ in series for x, _ in pts]
            ys = [min(y, 2.5) for _, pts, *_ in series for _, y in pts]
            if logx:
                lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
                fx = lambda x, lo=lo, hi=hi: pad + (math.log10(x) - lo) / (hi - lo) * (w - pad - 10)  # noqa: E731
                ticks = [(fx(10 ** k), fmt_bytes(10 ** k)) for k in range(lo, hi + 1)]
            else:
                top = max(xs) * 1.05
                fx = lambda x, top=top: pad + x / top * (w - pad - 10)  # noqa: E731
                step = 10 ** math.floor(math.log10(top / 2)) if top > 2 else 0.5
                ticks = [(fx(k * step), f"{k * step:g}") for k in range(int(top / step) + 1)]
            ymax = max(ys) * 1.05
            fy = lambda y, ymax=ymax: h - 36 - min(y, ymax) / ymax * (h - 60)  # noqa: E731
            g = [f'<g transform="translate({x0},{y0})">',
                 f'<rect width="{w}" height="{h}" fill="white" stroke="#e5e7eb"/>',
                 f'<text x="{w / 2}" y="16" text-anchor="middle" font-weight="600">{result["nodes"]} nodes: '
                 f'evaluation loss vs {label}</text>',
                 f'<line x1="{pad}" y1="{fy(result["target"])}" x2="{w - 10}" y2="{fy(result["target"])}" '
                 f'stroke="#9ca3af" stroke-dasharray="4 4"/>',
                 f'<text x="{w - 12}" y="{fy(result["target"]) - 4}" text-anchor="end" fill="#6b7280" '
                 f'font-size="10">DDP at step {result["steps"]}</text>',
                 f'<line x1="{pad}" y1="{h - 36}" x2="{w - 10}" y2="{h - 36}" stroke="#6b7280"/>',
                 f'<line x1="{pad}" y1="24" x2="{pad}" y2="{h - 36}" stroke="#6b7280"/>']
            for tx, tl in ticks:
                g.append(f'<text x="{tx:.1f}" y="{h - 22}" text-anchor="middle" font-size="10">{tl}</text>')
            for k in range(6):
                yv = ymax * k / 5
                g.append(f'<text x="{pad - 4}" y="{fy(yv) + 3:.1f}" text-anchor="end" font-size="10">'
                         f'{yv:.2g}</text>')
            for _name, pts, color, dash, width in series:
                if len(pts) < 2:
                    continue
                d = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
                g.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="{width}"'
                         + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
            g.append("</g>")
            panels.append("\n".join(g))
    legend_y = 40 + len(results) * (h + 60) - 30
    legend = ['<g font-size="11">']
    items = [("DDP", COLORS["DDP"], "")] + [(f"H={k}", COLORS[k], "") for k in INNER] + \
        [(p, "#374151", DASH[p]) for p in PRECISIONS]
    for i, (name, color, dash) in enumerate(items):
        x = 20 + i * 110
        legend.append(f'<line x1="{x}" y1="{legend_y}" x2="{x + 28}" y2="{legend_y}" stroke="{color}" '
                      f'stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        legend.append(f'<text x="{x + 34}" y="{legend_y + 4}">{name}</text>')
    legend.append("</g>")
    total_h = legend_y + 20
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w + 50}" height="{total_h}" '
        f'font-family="system-ui, sans-serif" font-size="12">\n'
        f'<text x="20" y="22" font-size="14" font-weight="700">DiLoCo vs DDP, digits CNN, 100 Mbit/s '
        f'emulated links; latency ({rtt * 1000:.0f} ms RTT) added by model</text>\n'
        + "\n".join(panels) + "\n" + "\n".join(legend) + "\n</svg>\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="N: DDP's steps (DiLoCo gets 2N)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rate-mbit", type=float, default=100)
    parser.add_argument("--rtt-ms", type=float, default=50)
    parser.add_argument("--svg", type=Path, help="write the plot here")
    parser.add_argument("--json", type=Path, help="write every figure and curve here")
    parser.add_argument("--from-json", type=Path, help="print the tables (and plot) of a saved run")
    parser.add_argument("--smoke", action="store_true",
                        help="2 nodes, DDP for 25 steps (the baseline), DiLoCo H=10 fp32 only")
    args = parser.parse_args()
    inners, precisions = (INNER, PRECISIONS) if not args.smoke else ((10,), ("fp32",))
    if args.smoke:
        args.nodes, args.steps = [2], 25
    rtt = args.rtt_ms / 1000
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        for result in results:
            print(table(result, args.rtt_ms) + "\n")
        if args.svg:
            svg(results, args.svg, rtt)
        return 0
    if os.geteuid() != 0:
        print("needs root: it creates network namespaces and tc qdiscs", file=sys.stderr)
        return 2
    print(f"bench/diloco.py · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · git {git_revision()} · {machine()}")
    print(f"{TEMPLATE} on sample:{SAMPLE}, defaults; {args.rate_mbit:g} Mbit/s tbf links; "
          f"+{args.rtt_ms:g} ms RTT by model")
    results = []
    with Hosts(max(args.nodes), rate_mbit=args.rate_mbit) as hosts, \
            tempfile.TemporaryDirectory(prefix="bench-diloco-") as tmp:
        for n in args.nodes:
            results.append(bench(hosts, n, args.steps, rtt, Path(tmp), inners, precisions))
            time.sleep(1)
    for result in results:
        print()
        print(table(result, args.rtt_ms))
    if args.svg:
        svg(results, args.svg, rtt)
        print(f"\nplot: {args.svg}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    ddp = {f"{r['nodes']} nodes": r["rows"][0] for r in results}
    report("diloco", smoke=args.smoke,
           baseline={f"{k}: DDP {f}": row[f] for k, row in ddp.items()
                     for f in ("loss", "bytes_rank0", "seconds")},
           figures={f"{r['nodes']} nodes: {row['config']}: {f}": row.get(f) for r in results
                    for row in r["rows"][1:] for f in ("step", "best_loss", "bytes_rank0", "seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
