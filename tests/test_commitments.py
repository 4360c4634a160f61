"""Per-rank gradient commitments (workers/training/commitments.py) and the replay that names
the node whose share was wrong (replay.attribute_segment), against real runs of the runtime:
two nodes of one gloo rank each, as the agents launch them (a torchrun per node)."""

import json
import os
import sys

import pytest
import torch

from workers.training import checkpoint, commitments, replay

from .training_runs import read_events, tabular_spec, train, train_nodes

EVERY = 7  # checkpoint every 7 steps (of 4 × 14)


def _spec(path, **params):
    return {**tabular_spec(path, checkpoint_every=EVERY, **params), "verify": None}


def _tables(dirs) -> dict[int, list[dict]]:
    return {node: [json.loads(line) for line in (d / commitments.FILE).read_text().splitlines()]
            for node, d in enumerate(dirs)}


def _replayer(spec) -> replay.Replayer:
    return replay.Replayer(replay.Job(template=spec["template"], params=spec["params"],
                                      dataset=spec["dataset"], world_size=2))


def _checkpoints(workdir) -> dict[int, str]:
    return {c["step"]: c["path"] for c in read_events(workdir)["checkpoint"]}


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    spec = _spec(tmp_path_factory.mktemp("honest"))
    return spec, train_nodes(spec)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    spec = _spec(tmp_path_factory.mktemp("corrupt"))
    return spec, train_nodes(spec, faults={1: "corrupt_gradients"})


def test_the_commitments_do_not_change_training_by_one_bit(honest, tmp_path):
    # The same job as two ranks of one node (no hook: DDP's built-in reduction) ends with
    # every checkpoint bitwise the same as the two-node run with the hook.
    spec, dirs = honest
    alone = train({**spec, "workdir": str(tmp_path)}, nproc=2)
    theirs = {c["step"]: c["path"] for c in alone["checkpoint"]}
    ours = _checkpoints(dirs[0])
    assert sorted(ours) == sorted(theirs) and len(ours) == 8
    for step, path in ours.items():
        assert checkpoint.load(path)["model"].keys() == checkpoint.load(theirs[step])["model"].keys()
        assert all(torch.equal(a, checkpoint.load(theirs[step])["model"][k])
                   for k, a in checkpoint.load(path)["model"].items()), step
    assert not (tmp_path / commitments.FILE).exists()  # one node: nothing to attribute


def test_every_node_keeps_the_whole_table_and_announces_it(honest):
    _spec_, dirs = honest
    tables = _tables(dirs)
    assert tables[0] == tables[1]  # the all-gather: every node has every rank's numbers
    assert [row["step"] for row in tables[0]] == list(range(56))
    assert all(len(row["grad"]) == 2 and all(len(v) == commitments.K for v in row["grad"])
               for row in tables[0])
    # At each stretch's first step, every rank's digest of the state it trained from: the
    # checkpoint's (or the initial state's) bits.
    paths = _checkpoints(dirs[0])
    starts = [row for row in tables[0] if "model" in row]
    assert [row["step"] for row in starts] == list(range(0, 56, EVERY))
    for row in starts[1:]:
        saved = commitments.state_digest(checkpoint.load(paths[row["step"]])["model"]).hex()
        assert row["model"] == [saved, saved]
    for node, d in enumerate(dirs):
        announced = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()
                     if json.loads(x)["type"] == "commitments"]
        assert [e["step"] for e in announced] == list(range(EVERY, 57, EVERY)), node
        raw = (d / commitments.FILE).read_bytes()
        assert sum(e["length"] for e in announced) == len(raw)
        assert raw[announced[1]["offset"]:][:announced[1]["length"]].decode().count("\n") == EVERY


def test_an_honest_run_names_nobody_whatever_the_thread_count(honest):
    spec, dirs = honest
    paths, tables = _checkpoints(dirs[0]), _tables(dirs)
    worst = 0.0
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for a in (7, 28, 49):
            runner = _replayer(spec)
            found = replay.attribute_segment(runner, checkpoint.load(paths[a]), tables, to_step=a + EVERY)
            assert found["ranks"] == [] and "matches the replay at step" in found["detail"], found
            witness = replay.Witness(runner.job.seed)
            runner.replay(checkpoint.load(paths[a]), to_step=a + EVERY, witness=witness)
            table = {row["step"]: row for row in tables[0]}
            for seen in witness.rows:
                row = table[seen["step"]]
                worst = max(worst, *(replay._off(row["grad"][r], seen["grad"][r], seen["grad_norm"][r])
                                     for r in range(2)),
                            replay._off(row["param"][0], seen["param"], seen["param_norm"]))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    print(f"honest commitments vs replay, 1 and 2 threads: largest relative distance {worst:.2e}",
          file=sys.stderr)
    assert worst < replay.ATTRIBUTION_TOLERANCE / 100


def test_a_rank_that_negates_its_gradients_is_named(corrupt):
    spec, dirs = corrupt
    paths, tables = _checkpoints(dirs[0]), _tables(dirs)
    runner = _replayer(spec)
    assert not replay.check_segment(runner, paths[14], paths[21], threshold=1e-4).passed
    found = replay.attribute_segment(runner, checkpoint.load(paths[14]), tables, to_step=21)
    assert (found["ranks"], found["step"]) == ([1], 14), found
    assert "every node's copy of the commitments agrees" in found["detail"]


def test_a_forged_or_missing_copy_names_nobody(corrupt):
    spec, dirs = corrupt
    paths, tables = _checkpoints(dirs[0]), _tables(dirs)
    runner = _replayer(spec)
    start = checkpoint.load(paths[14])
    # Node 1 (the cheat) says, in its own copy, that rank 0 committed something else: the
    # copies disagree, and nobody is named (never the honest rank 0).
    forged = {0: tables[0], 1: [dict(row) for row in tables[1]]}
    row = next(r for r in forged[1] if r["step"] == 14)
    row["grad"] = [[v * 3 for v in row["grad"][0]], row["grad"][1]]
    found = replay.attribute_segment(runner, start, forged, to_step=21)
    assert found["ranks"] == [] and "disagree at step 14" in found["detail"], found
    # A node that uploads no copy (the cheat withholding its own): nobody is named either,
    # since the other copy alone would be one node's word about another.
    found = replay.attribute_segment(runner, start, {0: tables[0]} | {1: []}, to_step=21)
    assert found["ranks"] == [] and "node rank 1's copy" in found["detail"], found


def test_a_checkpoint_that_is_not_what_the_ranks_held_names_nobody(honest):
    # Rank 0 uploads a start checkpoint a hair off what the group held (too little for the
    # replay threshold, enough to move another rank's gradient): the ranks' committed
    # digests are not the checkpoint's, so its gradients are not compared and nobody is named.
    spec, dirs = honest
    paths, tables = _checkpoints(dirs[0]), _tables(dirs)
    start = checkpoint.load(paths[21])
    name = next(k for k, v in start["model"].items() if v.dim() == 2)
    start["model"][name] = start["model"][name] + 1e-7 * torch.randn_like(start["model"][name])
    found = replay.attribute_segment(_replayer(spec), start, tables, to_step=28)
    assert found["ranks"] == [] and "ranks 0, 1 did not train step 21 from" in found["detail"], found


def test_a_difference_after_the_first_step_names_nobody(honest):
    # Past a segment's first step the parameters the group held are known only through the
    # replay: a rank whose commitments differ there (both copies agreeing) is not named, or
    # a rank that steered the parameters unseen could make an honest rank's gradient differ.
    spec, dirs = honest
    paths, tables = _checkpoints(dirs[0]), _tables(dirs)
    changed = {node: [dict(row) for row in table] for node, table in tables.items()}
    for table in changed.values():
        row = next(r for r in table if r["step"] == 30)
        row["grad"] = [row["grad"][0], [-v for v in row["grad"][1]]]
    found = replay.attribute_segment(_replayer(spec), checkpoint.load(paths[28]), changed, to_step=35)
    assert found["ranks"] == [], found
    assert "first differ at step 30 (gradients of ranks [1]" in found["detail"], found


def test_the_hook_reduces_bitwise_as_ddp_does_for_three_ranks(tmp_path):
    # With W = 3, dividing by W (torch's own allreduce_hook) is not what the built-in
    # reduction computes (it multiplies by 1/W): bitwise equality needs the latter.
    import torch.multiprocessing as mp

    results = {}
    for hooked in (False, True):
        out = tmp_path / f"out-{hooked}.pt"
        mp.spawn(_three_ranks, args=(str(tmp_path / f"store-{hooked}"), hooked, str(out)), nprocs=3)
        results[hooked] = torch.load(out, weights_only=True)
    assert all(torch.equal(results[False][k], results[True][k]) for k in results[False])


def _three_ranks(rank: int, store: str, hooked: bool, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    ddp = DDP(model)
    committer = commitments.Committer(model, seed=0, world=3, device=torch.device("cpu")) if hooked else None
    if committer is not None:
        ddp.register_comm_hook(None, committer.hook)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    for step in range(20):
        x, y = torch.randn(16, 30, generator=gen), torch.randint(0, 2, (16,), generator=gen)
        if committer is not None:
            committer.begin(step)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        if committer is not None:
            committer.end()
        opt.step()
    if rank == 0:
        torch.save(model.state_dict(), out)
    # As run.py does: no rank tears gloo down while a peer may still use its pairs, and the
    # process leaves without the interpreter's teardown: a finished rank now and then aborts
    # there ("terminate called without an active exception", a joinable C++ thread
    # destroyed; CI saw it even after the barrier). Its result is already written.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
