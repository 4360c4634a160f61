"""Each rank's output as the platform may see it: which rank wrote a line, the provider's
paths replaced, each line cut and the whole bounded in rate (issue 18).

torchrun (`--tee 3`) copies every rank's stdout and stderr to its own stdout and stderr with
the prefix in PREFIX_TEMPLATE; unprefixed lines are torchrun's own (the launcher)."""

from __future__ import annotations

import re
import sys
import sysconfig
import time
from pathlib import Path

PREFIX_TEMPLATE = "[rank${rank}]:"  # TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE: the global rank
_PREFIX = re.compile(r"^\[rank(\d{1,6})\]:")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_LINE_CHARS = 2000
RATE_BYTES_S = 8192  # sustained output per assignment sent to the platform
BURST_BYTES = 256 * 1024  # a traceback or a start-up banner passes whole
RUNTIME_ROOT = Path(__file__).resolve().parents[2]  # where workers/training is imported from


def split_rank(text: str) -> tuple[int | None, str]:
    """(global rank, the rank's own text), or (None, text) for torchrun's own lines."""
    found = _PREFIX.match(text)
    if found is None:
        return None, text
    return int(found.group(1)), text[found.end():]


class Redactor:
    """Replaces the provider's paths: the job's folder with <job>, the Python environment and
    this package with <runtime>, the home folder with ~ (longest first, so a job folder
    under the home folder reads <job>)."""

    def __init__(self, *, job_dir: Path, home: Path | None = None,
                 runtime: list[Path] | None = None) -> None:
        if runtime is None:
            runtime = [Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib", "stdlib")]
            runtime += [Path(sys.prefix), Path(sys.base_prefix), RUNTIME_ROOT]
        pairs = {str(job_dir): "<job>", str(job_dir.resolve()): "<job>"}
        for path in runtime:
            for form in {str(path), str(path.resolve())}:
                if len(form) > 1:
                    pairs.setdefault(form, "<runtime>")
        home = Path.home() if home is None else home
        if len(str(home)) > 1:
            pairs.setdefault(str(home), "~")
        self.pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def __call__(self, text: str) -> str:
        for path, label in self.pairs:
            if path in text:
                text = text.replace(path, label)
        return text


class RankLogs:
    """Turns raw output lines into the `log` message's items ({seq, t, rank, stream, text}),
    dropping what goes over the rate (a token bucket) and saying how much was dropped."""

    def __init__(self, redact: Redactor, *, rate: float = RATE_BYTES_S, burst: float = BURST_BYTES,
                 clock=time.monotonic) -> None:
        self.redact, self.rate, self.burst, self.clock = redact, rate, burst, clock
        self.tokens = burst
        self.refilled = clock()
        self.seq = 0
        self.dropped = 0
        # A DiLoCo node's torchrun is standalone: its ranks count from 0 on every node.
        self.rank_offset = 0

    def add(self, raw: bytes, stream: str) -> list[dict]:
        text = raw.decode(errors="replace").rstrip()
        rank, text = split_rank(text)
        rank = None if rank is None else rank + self.rank_offset
        text = _CONTROL.sub("", self.redact(text.replace("\t", "    ")))[:MAX_LINE_CHARS]
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        cost = len(text) + 32
        if self.tokens < cost:
            self.dropped += 1
            return []
        self.tokens -= cost
        out = []
        if self.dropped:
            out.append(self._item(None, "stderr", f"[{self.dropped} lines dropped: over the "
                                                 f"{self.rate / 1024:g} KB/s log limit]"))
            self.dropped = 0
        out.append(self._item(rank, stream, text))
        return out

    def _item(self, rank: int | None, stream: str, text: str) -> dict:
        self.seq += 1
        return {"seq": self.seq, "t": round(time.time(), 3), "rank": rank, "stream": stream,
                "text": text}
