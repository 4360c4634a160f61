"""DiLoCo's pure parts (wire encodings, the outer Nesterov step, byte accounting) and the
outer synchronisation protocol between a host and members over a real c10d TCPStore on
loopback, in threads of this process."""

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


def vec(value: float) -> list[torch.Tensor]:
    return [torch.full(s, value) for s in SHAPES]


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
    return results


@pytest.fixture
def host():
    h = outer.OuterHost(port=free_port(), precision="fp32", shapes=SHAPES, peer_timeout_s=1.0,
                        log=lambda _: None)
    yield h
    h.close()


def member(host, node_rank, digest="same", step=0, precision="fp32"):
    return outer.OuterMember(host="127.0.0.1", port=host.store.port, precision=precision,
                             shapes=SHAPES, node_rank=node_rank, member=f"a{node_rank}",
                             digest=digest, step=step, connect_timeout_s=10, wait_timeout_s=20)


def state_of(params, momentum=None):
    return lambda: ({"momentum": momentum is not None},
                    diloco.encode(params + (momentum or []), "fp32"))


def test_a_round_averages_every_members_pseudo_gradient_and_counts_its_bytes(host):
    a, b = member(host, 1), member(host, 2)
    host.wait_for_joiners(2, timeout_s=10)
    assert host.admit(round_=0, step=0, digest="same", state=state_of(vec(0))) == [1, 2]
    joined = run_all(a.join, b.join)
    assert [j["params"] for j in joined] == [None, None]  # same model at the start: no download
    (h_avg, header), (a_avg, _), (b_avg, _) = run_all(
        lambda: host.exchange(10, diloco.encode(vec(1.0), "fp32")),
        lambda: a.exchange(10, diloco.encode(vec(2.0), "fp32")),
        lambda: b.exchange(10, diloco.encode(vec(6.0), "fp32")))
    assert header["contributors"] == ["0", "1", "2"] and header["members"] == [0, 1, 2]
    for avg in (h_avg, a_avg, b_avg):
        assert all(torch.equal(t, torch.full(s, 3.0)) for t, s in zip(avg, SHAPES, strict=True))
    message = diloco.pack({"round": 10}, diloco.encode(vec(2.0), "fp32"))
    join_record = len(b'{"node_rank":1,"member":"a1","digest":"same","step":0}')
    assert a.sent == join_record + len(message)
    avg_message = diloco.pack(header, diloco.encode(vec(3.0), "fp32"))
    admits = 2 * len(b'{"round":0,"step":0,"state":false}')
    assert host.sent == admits + 2 * len(avg_message)  # one average to each member
    a.close()
    b.close()


def test_a_silent_member_is_dropped_and_a_replacement_joins_with_the_global_state(host):
    a, b = member(host, 1), member(host, 2)
    host.wait_for_joiners(2, timeout_s=10)
    host.admit(round_=0, step=0, digest="same", state=state_of(vec(0)))
    run_all(a.join, b.join)
    b.close()  # node rank 2 dies: no pseudo-gradient, no heartbeat
    (avg, header), (a_avg, _) = run_all(
        lambda: host.exchange(10, diloco.encode(vec(1.0), "fp32")),
        lambda: a.exchange(10, diloco.encode(vec(3.0), "fp32")))
    assert header["contributors"] == ["0", "1"] and 2 not in header["members"]
    assert torch.equal(avg[0], torch.full(SHAPES[0], 2.0))
    # A replacement for node rank 2 asks in; it is let in after the next completed round
    # with the global parameters and the outer momentum of that round.
    c = member(host, 2, digest="other", step=0)
    glob, momentum = vec(0.25), vec(-0.5)
    host.admit(round_=10, step=10, digest="mine", state=state_of(glob, momentum))
    got = c.join()
    assert got["step"] == 10 and got["round"] == 10
    assert all(torch.equal(x, y) for x, y in zip(got["params"], glob, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(got["momentum"], momentum, strict=True))
    (_, header), _, _ = run_all(
        lambda: host.exchange(20, diloco.encode(vec(1.0), "fp32")),
        lambda: a.exchange(20, diloco.encode(vec(1.0), "fp32")),
        lambda: c.exchange(20, diloco.encode(vec(1.0), "fp32")))
    assert header["contributors"] == ["0", "1", "2"]
    # The store keeps only the last round's average: nothing piles up over a long job.
    assert host.store.check(["avg/20"]) and not host.store.check(["avg/10"])
    assert not host.store.check(["state/10"]) and not host.store.check(["g/20/1"])
    a.close()
    c.close()


def test_a_member_the_host_dropped_is_told_so(host):
    a = member(host, 1)
    host.wait_for_joiners(1, timeout_s=10)
    host.admit(round_=0, step=0, digest="same", state=state_of(vec(0)))
    a.join()
    a.close()  # stops beating; it will come back late
    host.exchange(10, diloco.encode(vec(1.0), "fp32"))
    with pytest.raises(outer.OuterError, match="dropped"):
        a.exchange(10, diloco.encode(vec(1.0), "fp32"))


def test_int8_rounds_give_every_node_the_same_decoded_average():
    h = outer.OuterHost(port=free_port(), precision="int8", shapes=SHAPES, peer_timeout_s=1.0,
                        log=lambda _: None)
    try:
        a = member(h, 1, precision="int8")
        h.wait_for_joiners(1, timeout_s=10)
        h.admit(round_=0, step=0, digest="same", state=state_of(vec(0)))
        a.join()
        g0 = [torch.linspace(-1, 1, 20).reshape(5, 4), torch.tensor([0.1, 0.2, 0.3, 0.4])]
        g1 = [torch.linspace(1, -3, 20).reshape(5, 4), torch.tensor([1.0, -1.0, 0.5, 0.0])]
        (h_avg, _), (a_avg, _) = run_all(lambda: h.exchange(5, diloco.encode(g0, "int8")),
                                         lambda: a.exchange(5, diloco.encode(g1, "int8")))
        assert all(torch.equal(x, y) for x, y in zip(h_avg, a_avg, strict=True))
        exact = [(x + y) / 2 for x, y in zip(g0, g1, strict=True)]
        for got, want, x, y in zip(h_avg, exact, g0, g1, strict=True):
            # Both inputs quantized, then the average quantized again.
            bound = (diloco.int8_error_bound(x) + diloco.int8_error_bound(y)) / 2 \
                + diloco.int8_error_bound(want) * 1.1
            assert float((got - want).abs().max()) <= bound
        a.close()
    finally:
        h.close()


# --- the runtime, launched as the agent launches it, without the platform -----------------
@pytest.mark.integration
def test_hierarchical_diloco_runs_ddp_inside_each_node_for_the_forecaster(tmp_path):
    """Two nodes of two processes each (DDP inside a node, DiLoCo between them) on the
    load-forecast template: every outer step leaves both nodes with the same global model,
    and both processes of a node finish with it."""
    import json
    import subprocess

    from workers.agent import launcher

    port = free_port()
    procs = []
    for rank in (0, 1):
        work = tmp_path / f"node{rank}"
        work.mkdir()
        spec = {"template": "load-forecast", "dataset": {"kind": "sample", "name": "grid-load"},
                "params": {"epochs": 2, "batch_size": 64, "learning_rate": 0.002, "lookback_hours": 48,
                           "horizon_hours": 12, "hidden_size": 16, "checkpoint_every": 10, "seed": 3},
                "workdir": str(work), "backend": "gloo", "resume_from": None, "pg_timeout_s": 60,
                "sync": {"mode": "diloco", "inner_steps": 7, "outer_lr": 0.7, "outer_momentum": 0.9,
                         "precision": "int8"},
                "nnodes": 2, "node_rank": rank, "outer": {"host": "127.0.0.1", "port": port},
                "member": f"test-{rank}", "peer_timeout_s": 10}
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
