"""DiLoCo's pure parts (wire encodings, chunks, the outer Nesterov step, byte accounting)
and the outer synchronisation protocol (a reduce-scatter and an all-gather between node
leaders, coordinated by the host) over real c10d TCPStores on loopback, in threads of this
process."""

import threading

import pytest
import torch

from workers.agent.launcher import free_port
from workers.training import diloco, outer


def tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 30, generator=g) * 1e-3, torch.randn(64, generator=g) * 5.0,
            torch.zeros(7), torch.randn(3, 1, 3, 3, generator=g) * 1e4]


@pytest.mark.parametrize("seed", range(5))
def test_int8_pseudo_gradients_round_trip_within_half_a_quantization_step(seed):
    xs = tensors(seed)
    out = diloco.decode(diloco.encode(xs, "int8"), [x.shape for x in xs], "int8")
    for x, y in zip(xs, out, strict=True):
        bound = diloco.int8_error_bound(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        # Half a step (max|x| / 254), plus float32 rounding of x / scale and q * scale.
        assert float((x - y).abs().max()) <= bound * (1 + 1e-5) + 1e-12
    assert torch.equal(out[2], torch.zeros(7))  # an all-zero tensor stays exact
    # The bound is tight: it is reached to within one float32 ulp on random data.
    big = torch.randn(100_000, generator=torch.Generator().manual_seed(seed))
    (back,) = diloco.decode(diloco.encode([big], "int8"), [big.shape], "int8")
    assert float((big - back).abs().max()) > 0.99 * diloco.int8_error_bound(big)


def test_fp16_and_fp32_round_trips():
    xs = tensors(1)
    exact = diloco.decode(diloco.encode(xs, "fp32"), [x.shape for x in xs], "fp32")
    assert all(torch.equal(x, y) for x, y in zip(xs, exact, strict=True))
    half = diloco.decode(diloco.encode(xs, "fp16"), [x.shape for x in xs], "fp16")
    for x, y in zip(xs, half, strict=True):
        # fp16 keeps 11 significant bits; tiny values fall into its subnormals (step 2^-24).
        assert torch.all((x - y).abs() <= x.abs() * 2**-11 + 2**-24)


@pytest.mark.parametrize("precision", diloco.PRECISIONS)
def test_payload_sizes_are_exact(precision):
    xs = tensors(2)
    numels = [x.numel() for x in xs]
    data = diloco.encode(xs, precision)
    assert len(data) == diloco.payload_bytes(numels, precision)
    assert len(data) == {"fp32": 4, "fp16": 2, "int8": 1}[precision] * sum(numels) + (
        4 * len(xs) if precision == "int8" else 0)
    with pytest.raises(ValueError):
        diloco.decode(data[:-1], [x.shape for x in xs], precision)


def test_the_outer_step_is_nesterov_sgd_and_its_state_survives_a_checkpoint():
    params = [t.clone() for t in tensors(3)]
    reference = [torch.nn.Parameter(t.clone()) for t in params]
    sgd = torch.optim.SGD(reference, lr=0.7, momentum=0.9, nesterov=True)
    mine = diloco.OuterNesterov(lr=0.7, momentum=0.9)
    for k in range(4):
        grads = tensors(10 + k)
        mine.step(params, grads)
        for p, g in zip(reference, grads, strict=True):
            p.grad = g.clone()
        sgd.step()
        for p, r in zip(params, reference, strict=True):
            torch.testing.assert_close(p, r.detach(), rtol=1e-6, atol=1e-6)
    # Written by hand, the first step is θ − lr·(g + μ·g).
    theta, g = [torch.ones(3)], [torch.full((3,), 0.5)]
    diloco.OuterNesterov(lr=0.7, momentum=0.9).step(theta, g)
    torch.testing.assert_close(theta[0], torch.full((3,), 1 - 0.7 * (0.5 + 0.9 * 0.5)))
    # A restored optimizer continues exactly where the saved one was.
    restored = diloco.OuterNesterov(lr=0.7, momentum=0.9)
    restored.load_state_dict(mine.state_dict())
    a, b = [t.clone() for t in params], [t.clone() for t in params]
    mine.step(a, tensors(20))
    restored.step(b, tensors(20))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_ddp_byte_accounting_is_the_ring_all_reduce_out_of_each_node():
    size = 4 * 1_000_000  # one million fp32 parameters
    assert diloco.ddp_node_bytes_per_step(size, nnodes=1, nproc_per_node=4) == 0
    assert diloco.ddp_node_bytes_per_step(size, nnodes=2, nproc_per_node=1) == size
    assert diloco.ddp_node_bytes_per_step(size, nnodes=4, nproc_per_node=1) == 3 * size // 2
    # Two ranks per node: ring over 4 ranks, one hop per node crosses its link.
    assert diloco.ddp_node_bytes_per_step(size, nnodes=2, nproc_per_node=2) == 3 * size // 2


def test_sync_settings_default_to_ddp_and_fill_diloco_defaults():
    assert diloco.SyncConfig.from_spec(None).mode == "ddp"
    assert diloco.SyncConfig.from_spec({"mode": "ddp"}) == diloco.SyncConfig()
    cfg = diloco.SyncConfig.from_spec({"mode": "diloco", "inner_steps": 10, "precision": "int8"})
    assert (cfg.inner_steps, cfg.outer_lr, cfg.outer_momentum, cfg.precision) == (10, 0.7, 0.9, "int8")


# --- the protocol --------------------------------------------------------------------------
SHAPES = [torch.Size([5, 4]), torch.Size([4])]
PEER_TIMEOUT_S = 2.5  # members beat every second: well above it, so no one is dropped by mistake


def vec(value: float, shapes=SHAPES) -> list[torch.Tensor]:
    return [torch.full(s, value) for s in shapes]


def run_all(*calls):
    """Run callables in threads; return their results (re-raising the first error)."""
    results, errors = [None] * len(calls), []

    def target(i, fn):
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
    threads = [threading.Thread(target=target, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "a member hung"
    return results


def new_host(precision="fp32", shapes=SHAPES):
    return outer.OuterHost(port=free_port(), precision=precision, shapes=shapes,
                           peer_timeout_s=PEER_TIMEOUT_S, log=lambda _: None)


@pytest.fixture
def host():
    h = new_host()
    yield h
    h.close()


def member(host, node_rank, digest="same", step=0, precision="fp32", shapes=SHAPES, **more):
    return outer.OuterMember(host="127.0.0.1", port=host.store.port, precision=precision,
                             shapes=shapes, node_rank=node_rank, member=f"a{node_rank}",
                             digest=digest, step=step, connect_timeout_s=10, wait_timeout_s=20,
                             peer_timeout_s=PEER_TIMEOUT_S, log=lambda _: None, **more)


def state_of(params, momentum=None):
    return lambda: ({"momentum": momentum is not None},
                    diloco.encode(params + (momentum or []), "fp32"))


def start(host, *members):
    host.wait_for_joiners(len(members), timeout_s=10)
    admitted = host.admit(round_=0, step=0, digest="same", state=state_of(vec(0, host.shapes)))
    joined = run_all(*(m.join for m in members))
    return admitted, joined


def rounds(round_, pairs):
    """One exchange of every (node, pseudo-gradient) pair, at once."""
    return run_all(*(lambda n=n, g=g: n.exchange(round_, g) for n, g in pairs))


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_round_averages_every_members_pseudo_gradient_and_counts_its_bytes(host):
    a, b = member(host, 1), member(host, 2)
    admitted, joined = start(host, a, b)
    assert admitted == [1, 2]
    assert [j["params"] for j in joined] == [None, None]  # same model at the start: no download
    (h_avg, header), (a_avg, a_header), (b_avg, _) = rounds(10, [(host, vec(1.0)), (a, vec(2.0)),
                                                                 (b, vec(6.0))])
    assert header["contributors"] == ["0", "1", "2"] and header["members"] == [0, 1, 2]
    assert a_header == header and header["repaired"] == []
    for avg in (h_avg, a_avg, b_avg):
        assert same(avg, vec(3.0))
    # 24 values in three chunks of 8: each member sends two parts of its pseudo-gradient
    # and its averaged chunk twice, every one 8 fp32 values plus its header.
    chunk = 8 * 4
    part = len(diloco.pack({"round": 10})) + chunk
    averaged = len(diloco.pack({"round": 10, "contributors": [0, 1, 2]})) + chunk
    join_record = len(b'{"node_rank":1,"member":"a1","digest":"same","step":0,"addr":["127.0.0.1",')
    join_record += len(f'{a.inbox.port}]}}')
    report = len(b'{"missing":[],"chunks":{"1":[0,1,2],"0":[0,1,2],"2":[0,1,2]}}')
    assert a.sent == join_record + 2 * part + 2 * averaged + report
    a.close()
    b.close()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_four_members_apply_identical_averages_and_each_sends_two_n_minus_one_over_n(precision):
    """A reduce-scatter and an all-gather: every node, the host too, sends about
    2·(n−1)/n of the payload a round; all decode the same bytes."""
    shapes = [torch.Size([300, 100]), torch.Size([100]), torch.Size([3, 1, 3, 3]), torch.Size([7])]
    h = new_host(precision, shapes)
    try:
        ms = [member(h, r, precision=precision, shapes=shapes) for r in (1, 2, 3)]
        start(h, *ms)
        nodes = [h, *ms]
        before = [n.sent for n in nodes]
        g = torch.Generator().manual_seed(7)
        scales = (1e-3, 5.0, 1e3, 0)
        grads = [[torch.randn(s, generator=g) * k for s, k in zip(shapes, scales, strict=True)]
                 for _ in nodes]
        results = rounds(50, list(zip(nodes, grads, strict=True)))
        averages = [avg for avg, _ in results]
        assert all(same(averages[0], avg) for avg in averages[1:])
        assert results[0][1]["contributors"] == ["0", "1", "2", "3"]
        assert results[0][1]["repaired"] == []  # no chunk went through the host
        mean = [sum(gs) / 4 for gs in zip(*grads, strict=True)]
        for got, want, inputs in zip(averages[0], mean, zip(*grads, strict=True), strict=True):
            if precision == "fp32":
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            else:  # each part quantized by its sender, the average once by its owner
                bound = sum(map(diloco.int8_error_bound, inputs)) / 4 + diloco.int8_error_bound(want) * 1.1
                assert float((got - want).abs().max()) <= bound + 1e-9
        payload = diloco.payload_bytes([s.numel() for s in shapes], precision)
        ideal = 2 * 3 * payload / 4
        for node, was in zip(nodes, before, strict=True):
            sent = node.sent - was
            # Headers, per-piece int8 scales, the report (and the host's three verdicts).
            assert ideal <= sent <= ideal * 1.005 + 1500, (node, sent, ideal)
        for m in ms:
            m.close()
    finally:
        h.close()


def test_a_silent_member_is_dropped_and_a_replacement_joins_with_the_global_state(host):
    a, b = member(host, 1), member(host, 2)
    start(host, a, b)
    b.close()  # node rank 2 hangs: no parts, no averaged chunk, no heartbeat
    # A replacement for node rank 2 asks in; it is let in after the next completed round
    # with the global parameters and the outer momentum of that round.
    c = member(host, 2, digest="other", step=0)
    (avg, header), (a_avg, _) = rounds(10, [(host, vec(1.0)), (a, vec(3.0))])
    assert header["contributors"] == ["0", "1"] and header["members"] == [0, 1, 3]
    # Node rank 2 owned a chunk: it is averaged through the host instead, the same for all.
    assert header["repaired"] == [2]
    assert same(avg, vec(2.0)) and same(a_avg, vec(2.0))
    glob, momentum = vec(0.25), vec(-0.5)
    host.admit(round_=10, step=10, digest="mine", state=state_of(glob, momentum))
    got = c.join()
    assert got["step"] == 10 and got["round"] == 10
    assert same(got["params"], glob) and same(got["momentum"], momentum)
    (avg, header), _, (c_avg, _) = rounds(20, [(host, vec(1.0)), (a, vec(1.0)), (c, vec(4.0))])
    assert header["contributors"] == ["0", "1", "2"] and header["repaired"] == []
    assert same(avg, vec(2.0)) and same(c_avg, vec(2.0))
    # The store keeps only the last round's verdict: nothing piles up over a long job.
    assert host.store.check(["round/20"]) and not host.store.check(["round/10"])
    assert not host.store.check(["state/10"]) and not host.store.check(["fix/10/2"])
    assert not host.store.check(["g/20/1"]) and not host.store.check(["a/20/1"])
    a.close()
    c.close()


def test_an_unreachable_member_is_served_through_the_host(host):
    """Node rank 2 beats and sends, but nobody reaches its inbox (its advertised port is
    closed): the others give it up for the chunks it should have sent or received, and
    those chunks are averaged through the host, so every node still applies the same bytes."""
    a, b = member(host, 1), member(host, 2, advertise_port=free_port())
    start(host, a, b)
    results = rounds(10, [(host, vec(1.0)), (a, vec(2.0)), (b, vec(6.0))])
    assert len(results) == 3  # one per node, each checked below
    for avg, header in results:
        assert same(avg, vec(3.0))
        assert header["repaired"] == [0, 1, 2] and header["contributors"] == ["0", "1", "2"]
    a.close()
    b.close()


def test_a_member_the_host_dropped_is_told_so(host):
    a = member(host, 1)
    start(host, a)
    a.close()  # stops beating; it will come back late
    host.exchange(10, vec(1.0))
    with pytest.raises(outer.OuterError, match="dropped"):
        a.exchange(10, vec(1.0))
    # What it pushed late does not stay in the host's inbox once the next round is over.
    host.admit(round_=10, step=10, digest="x", state=state_of(vec(0)))
    host.exchange(20, vec(1.0))
    assert not host.store.check(["g/10/1"]) and not host.store.check(["a/10/1"])


def test_int8_rounds_give_every_node_the_same_decoded_average():
    h = new_host("int8")
    try:
        a = member(h, 1, precision="int8")
        start(h, a)
        g0 = [torch.linspace(-1, 1, 20).reshape(5, 4), torch.tensor([0.1, 0.2, 0.3, 0.4])]
        g1 = [torch.linspace(1, -3, 20).reshape(5, 4), torch.tensor([1.0, -1.0, 0.5, 0.0])]
        (h_avg, _), (a_avg, _) = rounds(5, [(h, g0), (a, g1)])
        assert same(h_avg, a_avg)
        exact = [(x + y) / 2 for x, y in zip(g0, g1, strict=True)]
        for got, want, x, y in zip(h_avg, exact, g0, g1, strict=True):
            # Both inputs quantized, then the average quantized again.
            bound = (diloco.int8_error_bound(x) + diloco.int8_error_bound(y)) / 2 \
                + diloco.int8_error_bound(want) * 1.1
            assert float((got - want).abs().max()) <= bound
        a.close()
    finally:
        h.close()


@pytest.mark.parametrize(("total", "parts"), [(24, 3), (10, 4), (3, 4), (21_386, 4)])
def test_chunks_cover_the_parameters_once_and_split_at_tensor_ends(total, parts):
    bounds = diloco.chunk_bounds(total, parts)
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(bounds, bounds[1:], strict=False))
    assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
    numels = [total // 3, total // 3, total - 2 * (total // 3)]
    for lo, hi in bounds:
        pieces = diloco.chunk_pieces(numels, lo, hi)
        assert sum(pieces) == hi - lo and all(p > 0 for p in pieces)
        values = torch.arange(lo, hi, dtype=torch.float32)
        for precision in diloco.PRECISIONS:
            data = diloco.encode_chunk(values, pieces, precision)
            assert len(data) == diloco.payload_bytes(pieces, precision)
            back = diloco.decode_chunk(data, pieces, precision)
            assert back.shape == values.shape
    assert diloco.chunk_pieces([5, 5], 3, 7) == [2, 2]  # cut where the first tensor ends


# --- the runtime, launched as the agent launches it, without the platform -----------------
HIERARCHICAL = {  # every built-in template, small enough for a test
    "load-forecast": ({"kind": "sample", "name": "grid-load"},
                      {"epochs": 2, "batch_size": 64, "learning_rate": 0.002, "lookback_hours": 48,
                       "horizon_hours": 12, "hidden_size": 16}),
    "tabular-classifier": ({"kind": "sample", "name": "breast-cancer"},
                           {"epochs": 2, "batch_size": 16, "learning_rate": 0.003, "hidden_units": 16,
                            "hidden_layers": 2, "dropout": 0.1}),
    "image-classifier": ({"kind": "sample", "name": "digits"},
                         {"epochs": 1, "batch_size": 64, "learning_rate": 0.003, "channels": 4}),
}


@pytest.mark.integration
@pytest.mark.parametrize("template", sorted(HIERARCHICAL))
def test_hierarchical_diloco_runs_ddp_inside_each_node(tmp_path, template):
    """Two nodes of two processes each (DDP inside a node, DiLoCo between them), for each
    built-in template: every outer step leaves both nodes with the same global model, and
    both processes of a node finish with it."""
    import json
    import subprocess

    from workers.agent import launcher

    port = free_port()
    procs = []
    for rank in (0, 1):
        work = tmp_path / f"node{rank}"
        work.mkdir()
        dataset, params = HIERARCHICAL[template]
        spec = {"template": template, "dataset": dataset,
                "params": {**params, "checkpoint_every": 10, "seed": 3},
                "workdir": str(work), "backend": "gloo", "resume_from": None, "pg_timeout_s": 60,
                "sync": {"mode": "diloco", "inner_steps": 7, "outer_lr": 0.7, "outer_momentum": 0.9,
                         "precision": "int8"},
                "nnodes": 2, "node_rank": rank, "outer": {"host": "127.0.0.1", "port": port},
                "member": f"test-{rank}", "peer_timeout_s": 10,
                # As the platform sends it: every outer message carries its HMAC under this.
                "job_secret": "5e" * 32}
        (work / "spec.json").write_text(json.dumps(spec))
        cmd = launcher.command(spec_path=work / "spec.json", nnodes=2, node_rank=rank, nproc_per_node=2,
                               master_addr="127.0.0.1", master_port=port, standalone=True)
        procs.append(subprocess.Popen(cmd, env=launcher.environment(threads=1), cwd=work,
                                      stdout=open(work / "out.log", "w"), stderr=subprocess.STDOUT))  # noqa: SIM115
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], (tmp_path / "node1" / "out.log").read_text()[-2000:]

    def outer_events(rank):
        lines = (tmp_path / f"node{rank}" / "events.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["type"] in ("outer", "finished")]
    host, other = outer_events(0), outer_events(1)
    rounds = [e for e in host if e["type"] == "outer"]
    total = next(e for e in host if e["type"] == "finished")["total_steps"]
    assert [e["step"] for e in rounds] == sorted({*range(7, total + 1, 7), total})
    assert [(e["step"], e["sha256"], e["contributors"]) for e in rounds] == [
        (e["step"], e["sha256"], ["0", "1"]) for e in other]
    finished = next(e for e in host if e["type"] == "finished")
    # Both processes of node 0 hold the final global model.
    assert finished["param_digests"] == [rounds[-1]["sha256"]] * 2
    assert finished["comm_bytes"] < finished["comm_bytes_ddp"]
    # Checkpoints are taken after outer steps and hold the outer optimizer's state.
    from workers.training import checkpoint
    latest = checkpoint.load(checkpoint.latest(tmp_path / "node0" / "checkpoints"))
    assert latest["step"] == total and latest["sync"]["mode"] == "diloco"
    momentum = latest["outer"]["buffers"]
    assert [tuple(b.shape) for b in momentum] == [tuple(t.shape) for t in latest["model"].values()]
    assert all(b.abs().sum() > 0 for b in momentum)
