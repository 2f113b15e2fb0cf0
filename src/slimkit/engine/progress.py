"""What a run shows and records: a Rich progress bar and the JSON-lines log (train_log.jsonl)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from slimkit.utils.io import atomic_write_text, to_jsonable

__all__ = ["RunLog", "ProgressBar", "LOG_FILE"]

LOG_FILE = "train_log.jsonl"


class RunLog:
    """Append-only JSON-lines log; one record per event ({"event": "epoch", ...})."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **to_jsonable(fields)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        return out

    def truncate_after(self, epochs_completed: int) -> None:
        """Drop epoch records the checkpoint does not cover (written just before a kill)."""
        if self.path is None or not self.path.is_file():
            return
        kept = [r for r in self.records() if r.get("event") != "epoch" or r.get("epoch", 0) <= epochs_completed]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class ProgressBar:
    """A Rich bar per epoch showing loss, accuracy and images/s; silent when disabled."""

    def __init__(self, enabled: bool, total_epochs: int):
        self.enabled = enabled
        self.total_epochs = total_epochs
        self._progress = None
        self._task = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self._progress is not None:
            desc = f"epoch {epoch + 1}/{self.total_epochs}"
            self._task = self._progress.add_task(desc, total=steps, stats="")

    def update(self, loss: float, accuracy: float, images_per_s: float) -> None:
        if self._progress is not None and self._task is not None:
            stats = f"loss {loss:.4f}  acc {accuracy:.3f}  {images_per_s:,.0f} img/s"
            self._progress.update(self._task, advance=1, stats=stats)

    def end_epoch(self, summary: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, stats=summary)
            self._task = None
