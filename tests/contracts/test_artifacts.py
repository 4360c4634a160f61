"""The committed artifacts (contracts/artifacts/*.json) are what contracts/src compiles to
with the pinned solc-js: the platform deploys and calls exactly the code that was reviewed."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .support import ARTIFACTS, ROOT, load_artifact

CONTRACTS = ROOT / "contracts"


def check(contracts_dir: Path) -> subprocess.CompletedProcess:
    if not (CONTRACTS / "node_modules" / "solc").exists():
        pytest.fail("contracts/node_modules is missing: run `make contracts` (npm ci in contracts/)")
    return subprocess.run(["node", str(contracts_dir / "compile.mjs"), "--check"], capture_output=True,
                          text=True, timeout=300)


def test_committed_artifacts_match_the_sources():
    result = check(CONTRACTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_notices_a_stale_artifact(tmp_path):
    copy = tmp_path / "contracts"
    copy.mkdir()
    shutil.copy(CONTRACTS / "compile.mjs", copy)
    shutil.copytree(CONTRACTS / "src", copy / "src")
    shutil.copytree(ARTIFACTS, copy / "artifacts")
    (copy / "node_modules").symlink_to(CONTRACTS / "node_modules")
    stale = copy / "artifacts" / "JobEscrow.json"
    artifact = json.loads(stale.read_text())
    artifact["deployedBytecode"] = artifact["deployedBytecode"][:-2] + "00"
    stale.write_text(json.dumps(artifact, indent=2) + "\n")

    result = check(copy)
    assert result.returncode == 1
    assert "differs from the sources: artifacts/JobEscrow.json" in result.stderr


def test_artifacts_name_the_compiler_and_the_evm_version():
    for name in ("JobEscrow", "TestUSD"):
        compiler = load_artifact(name)["compiler"]
        assert compiler["solc"].startswith("0.8.30+")
        assert compiler["evmVersion"] == "prague"
        assert compiler["optimizer"]["enabled"]
