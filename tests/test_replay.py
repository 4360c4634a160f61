"""Replay spot checks (workers/training/replay.py) against real runs of the runtime: two
gloo ranks started by torch.distributed.run, honest and with a skipped-steps fault."""

import pytest
import torch

from workers.training import checkpoint, faults, replay

from .training_runs import tabular_spec, train

THRESHOLD = 1e-4


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    spec = tabular_spec(tmp_path_factory.mktemp("honest"))
    return spec, train(spec, nproc=2)


def _replayer(spec: dict, **params) -> replay.Replayer:
    return replay.Replayer(replay.Job(template=spec["template"], params={**spec["params"], **params},
                                      dataset=spec["dataset"], world_size=2))


def _paths(events: dict) -> dict[int, str]:
    return {c["step"]: c["path"] for c in events["checkpoint"]}


def test_an_honest_segment_replays_within_the_threshold(honest):
    spec, events = honest
    paths = _paths(events)
    steps = sorted(paths)
    # The platform asked for segments of 10 % / 2 of the run: checkpoints that often.
    assert events["started"]["total_steps"] == 4 * 14
    assert steps[1] - steps[0] == 2 and len(steps) == 28
    replayer = _replayer(spec)
    for a, b in [(steps[0], steps[1]), (steps[10], steps[11]), (steps[-2], steps[-1])]:
        result = replay.check_segment(replayer, paths[a], paths[b], threshold=THRESHOLD)
        assert result.passed and result.rel_l2 < 1e-6, result
    # From step 0 too: the initial model is what training at step 0 started from.
    final = checkpoint.load(paths[steps[-1]])
    metric, value = replayer.evaluate(final["model"])
    assert (metric, value) == (events["finished"]["metric"], events["finished"]["value"])


def test_the_learning_rate_comes_from_the_job_not_the_providers_optimizer_state(honest, tmp_path):
    spec, events = honest
    paths = _paths(events)
    a, b = sorted(paths)[3:5]
    start = checkpoint.load(paths[a])
    for group in start["optimizer"]["param_groups"]:
        group["lr"] *= 10  # what a provider's state might claim
    forged = tmp_path / "forged.pt"
    torch.save(start, forged)
    assert replay.check_segment(_replayer(spec), forged, paths[b], threshold=THRESHOLD).passed


def test_a_changed_learning_rate_fails(honest):
    spec, events = honest
    paths = _paths(events)
    a, b = sorted(paths)[3:5]
    # Trained with a learning rate 1 % off the job's. (+0.1 % shows ~1e-2 over 100 steps but
    # only ~4e-5 over this 2-step segment: longer segments catch subtler changes.)
    lr = spec["params"]["learning_rate"] * 1.01
    result = replay.check_segment(_replayer(spec, learning_rate=lr), paths[a], paths[b],
                                  threshold=THRESHOLD)
    assert not result.passed and result.rel_l2 > 1e-4


def test_tampered_parameters_fail(honest, tmp_path):
    spec, events = honest
    paths = _paths(events)
    a, b = sorted(paths)[5:7]
    end = checkpoint.load(paths[b])
    name = next(k for k, v in end["model"].items() if v.dim() == 2)
    end["model"][name] = end["model"][name] + 1e-3 * torch.randn_like(end["model"][name])
    tampered = tmp_path / "tampered.pt"
    torch.save(end, tampered)
    result = replay.check_segment(_replayer(spec), paths[a], tampered, threshold=THRESHOLD)
    assert not result.passed


def test_skipped_steps_fail_every_segment_that_holds_one(tmp_path):
    spec = tabular_spec(tmp_path)
    events = train(spec, nproc=2, faults="skip_steps=0.25")
    paths = _paths(events)
    steps = sorted(paths)
    fault = faults.parse("skip_steps=0.25")
    replayer = _replayer(spec)
    outcomes = []
    for a, b in zip([0, *steps], steps, strict=False):
        if a == 0:
            continue
        skipped = any(fault.skip(s) for s in range(a, b))
        result = replay.check_segment(replayer, paths[a], paths[b], threshold=THRESHOLD)
        outcomes.append((skipped, result.passed))
    assert outcomes and all(passed != skipped for skipped, passed in outcomes), outcomes
    assert events["finished"]["total_steps"] == events["finished"]["step"]  # still reported as done


def test_rel_l2_of_different_shapes_is_infinite():
    assert replay.rel_l2({"w": torch.ones(2)}, {"w": torch.ones(3)}) == float("inf")
    assert replay.rel_l2({"w": torch.ones(2)}, {"v": torch.ones(2)}) == float("inf")


def test_the_faults_variable_is_parsed_strictly():
    assert faults.parse("skip_steps=0.1,inflate_metric=0.05").as_dict() == {
        "skip_steps": 0.1, "inflate_metric": 0.05}
    assert not faults.parse("").any
    for bad in ("skip=0.1", "skip_steps=lots", "inflate_metric=2"):
        with pytest.raises(faults.FaultSpecError):
            faults.parse(bad)
    assert [s for s in range(20) if faults.parse("skip_steps=0.1").skip(s)] == [9, 19]
    assert faults.parse("inflate_metric=0.05").report("accuracy", 0.9) == pytest.approx(0.95)
    assert faults.parse("inflate_metric=0.05").report("mape", 10.0) == pytest.approx(9.5)
