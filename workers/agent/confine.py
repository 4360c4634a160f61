"""The first link of a sandboxed assignment's command: put this process in the assignment's
cgroups, set its resource limits, tie its life to the agent's, then exec the rest.

    python -I confine.py '{"cgroups": [...], "rlimits": {"NOFILE": 4096, ...}}' CMD ARGS...

Run by path with `-I` (standard library only): nothing from the provider's environment or
the job's folder is imported before the limits hold. Limits set here are inherited by every
process of the sandbox (bwrap, torchrun, the ranks) and cannot be raised from inside it
(bwrap drops every capability).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: confine.py CONFIG_JSON CMD [ARGS...]", file=sys.stderr)
        return 2
    config = json.loads(argv[1])
    for procs in config.get("cgroups", []):
        # Joining the cgroup before the exec: every child is counted from its first fork.
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))
    for name, value in config.get("rlimits", {}).items():
        which = getattr(resource, f"RLIMIT_{name}")
        resource.setrlimit(which, (int(value), int(value)))
    # The agent gone (killed, crashed), the sandbox goes too: bwrap's --die-with-parent
    # only covers bwrap's own parent, which is this process after the exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != config.get("parent", os.getppid()):
        return 1  # the agent died before the prctl: do not start orphaned work
    os.execvp(argv[2], argv[2:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
