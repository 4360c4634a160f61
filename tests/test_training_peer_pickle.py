"""Issue 13 item 1: nothing a peer rank sends is ever unpickled.

Before, the runtime gathered the ranks' parameter digests with `dist.all_gather_object`,
which unpickles every rank's contribution in rank 0's process: a hostile peer whose object
ran a shell command ran it on the honest provider's machine. Now each rank sends 32 raw
bytes in a fixed-shape uint8 tensor, and rank 0 only ever hex-encodes them.
"""

from __future__ import annotations

import re
from pathlib import Path

from workers.training import faults, run

from .training_runs import tabular_spec, train


def test_a_peers_pickle_is_carried_as_bytes_and_never_run(tmp_path: Path):
    # Through the real runtime (torch.distributed.run, two gloo ranks): rank 1 puts a
    # working pickle exploit (os.system("touch pwned"), 32 bytes) in its digest slot.
    work = tmp_path / "job"
    events = train(tabular_spec(work, epochs=1), nproc=2, faults="pickle_peer")
    finished = events["finished"]
    assert not (work / "pwned").exists(), "rank 0 unpickled a peer's bytes and ran its command"
    honest, hostile = finished["param_digests"]
    assert re.fullmatch(r"[0-9a-f]{64}", honest)
    # The peer's bytes arrive as what they are, data: recorded, never deserialized.
    assert hostile == faults.PICKLE_PAYLOAD.hex()
    assert honest != hostile


def test_the_runtime_uses_no_object_collective():
    # Every torch.distributed `*_object` collective unpickles what peers send.
    source = Path(run.__file__).parent
    for path in source.glob("*.py"):
        text = path.read_text()
        assert "_object(" not in text, path
        assert "import pickle" not in text and "pickle.load" not in text, path
        for call in re.findall(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call, (path, call)
