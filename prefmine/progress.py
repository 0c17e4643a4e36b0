"""Progress a person can read: one line per stage or epoch with done/total, rate and ETA.

`Progress` counts units of one stage (tasks, epochs, rows) and writes `name: done/total unit, rate, ETA` lines
to stderr (stdout stays for results, e.g. the JSON `data prepare` prints). On a terminal the line is rewritten in
place; in a log or a pipe a line is written at most every `every_s` seconds, and always for the last unit, so a
long stage shows it is alive without flooding the log. `EpochFollower` turns the per-epoch JSON lines a training
run's rank 0 writes (`metrics.jsonl`) into such lines in the driver, from a thread, so the console shows epochs
without forwarding every worker's output.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def format_duration(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m`: short enough for a progress line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(per_s: float, unit: str) -> str:
    """`1,234 rows/s`, `2.5 tasks/s`, `12.0 s/epoch` (a slow rate reads better as time per unit)."""
    if per_s <= 0:
        return f"- {unit}/s"
    if per_s < 1:
        return f"{1 / per_s:.1f} s/{unit.rstrip('s')}"
    return f"{per_s:,.0f} {unit}/s" if per_s >= 100 else f"{per_s:.1f} {unit}/s"


class Progress:
    """Done/total, rate and ETA of one stage, written as lines to `out` (default stderr)."""

    def __init__(self, name: str, total: int, unit: str = "tasks", out: TextIO | None = None,
                 every_s: float = 5.0, clock: Callable[[], float] = time.monotonic, done: int = 0):
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.name, self.total, self.unit = name, int(total), unit
        self.out = out if out is not None else sys.stderr
        self.every_s, self.clock = every_s, clock
        self.start_done = self.done = int(done)  # a resumed run starts past 0; its rate counts only new units
        self.t0 = clock()
        self._last_write = None
        self._tty = bool(getattr(self.out, "isatty", lambda: False)())

    def rate(self) -> float:
        """Units a second since the start (0 before the first unit)."""
        elapsed = self.clock() - self.t0
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first unit."""
        r = self.rate()
        return (self.total - self.done) / r if r > 0 else None

    def line(self, extra: str = "") -> str:
        eta = self.eta()
        parts = [f"{self.name}: {self.done}/{self.total} {self.unit}", format_rate(self.rate(), self.unit)]
        if self.done >= self.total:
            parts.append(f"done in {format_duration(self.clock() - self.t0)}")
        else:
            parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
        return ", ".join(parts) + (f", {extra}" if extra else "")

    def update(self, n: int = 1, extra: str = "", force: bool = False) -> None:
        """Count `n` more units; write the line when due (always on the last unit or with `force`)."""
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        now = self.clock()
        last = self.done >= self.total
        if not (force or last or self._last_write is None or now - self._last_write >= self.every_s):
            return
        self._last_write = now
        if self._tty:
            self.out.write("\r\033[K" + self.line(extra) + ("\n" if last else ""))
        else:
            self.out.write(self.line(extra) + "\n")
        self.out.flush()


def epoch_line(record: dict) -> str:
    """The metrics of one epoch record, short: loss and the evaluation metrics, 4 decimals."""
    skip = {"epoch", "epoch_seconds", "restarts", "samples_per_s", "history", "best_epoch"}
    items = [f"{k} {v:.4f}" for k, v in record.items() if k not in skip and isinstance(v, (int, float))]
    if record.get("samples_per_s"):
        items.append(f"{record['samples_per_s']:,.0f} samples/s")
    return ", ".join(items)


class EpochFollower:
    """Follow a run's `metrics.jsonl` (one JSON object per finished epoch, with `epoch` from 0) and write one
    progress line per new epoch. The file may be rewritten from the start (a resumed run); epochs already shown
    are not shown again, and a file older than the follower (a previous run's) is not read. Use as a context
    manager around the blocking training call."""

    def __init__(self, path: str | Path, name: str, epochs: int, out: TextIO | None = None, poll_s: float = 1.0):
        self.path = Path(path)
        self.progress = Progress(f"[{name}] epoch", epochs, unit="epochs", out=out, every_s=0.0)
        self.poll_s = poll_s
        self.since = time.time() - 1.0  # file times have coarse resolution on some file systems
        self.shown = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> int:
        """Show the epochs written since the last call; returns how many were new."""
        try:
            if self.path.stat().st_mtime < self.since:  # a previous run's file, not yet rewritten by this one
                return 0
            text = self.path.read_text()
        except OSError:
            return 0
        new = 0
        for raw in text.splitlines():
            try:
                rec = json.loads(raw)
                epoch = int(rec["epoch"])
            except (ValueError, KeyError, TypeError):
                continue  # a line being written, or not an epoch record
            if epoch <= self.shown:
                continue
            self.shown = epoch
            self.progress.update(1, extra=epoch_line(rec), force=True)
            new += 1
        return new

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def __enter__(self) -> EpochFollower:
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.path.parent.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll()  # the last epochs, written just before the run returned
