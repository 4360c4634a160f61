"""What the provider sees in the terminal: a status line per event and a live progress
bar per running assignment (loss, throughput, ETA)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Display:
    def __init__(self, *, plain: bool = False):
        self.console = Console(stderr=False, force_terminal=None if not plain else False,
                               highlight=False)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("steps · loss {task.fields[loss]} · {task.fields[rate]} samples/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False, disable=plain,
        )
        self._tasks: dict[int, TaskID] = {}
        self.plain = plain

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def log(self, message: str) -> None:
        self.progress.console.print(message)

    def assignment_started(self, assignment: int, label: str, total: int, done: int = 0) -> None:
        if assignment not in self._tasks:
            self._tasks[assignment] = self.progress.add_task(label, total=total or None,
                                                             completed=done, loss="–", rate="–")
        self.log(f"▶ {label}: training started ({done}/{total} steps done before)")

    def assignment_progress(self, assignment: int, *, step: int, total: int, loss: float | None,
                            rate: float | None) -> None:
        task = self._tasks.get(assignment)
        if task is None:
            return
        self.progress.update(task, completed=step, total=total,
                             loss=f"{loss:.4f}" if loss is not None else "–",
                             rate=f"{rate:,.0f}" if rate is not None else "–")
        if self.plain and total and (step == total or step % max(1, total // 10) == 0):
            self.log(f"  assignment {assignment}: step {step}/{total} loss {loss:.4f}")

    def assignment_done(self, assignment: int, message: str) -> None:
        task = self._tasks.pop(assignment, None)
        if task is not None:
            self.progress.remove_task(task)
        self.log(message)
