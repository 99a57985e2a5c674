"""When to consolidate, without ever stalling the agent: a trigger starts `engramma consolidate` in its own
process (at a lower CPU priority) once enough items are queued or the agent has been idle long enough. Each
run is bounded: at most `max_items` items a scope, and `--max-minutes` of wall clock, after which the job
stops between two training steps and puts its items back in the queue. Should the run not stop by itself
(stuck loading a model, say), the trigger ends it a grace period later; its items then return when their
lease runs out. The run's output goes to a log file, never to a pipe the agent would have to drain.

The third trigger needs no code: cron or a systemd timer running `engramma consolidate STORE --max-minutes N`
(README).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from engramma.memory.store import open_existing
from engramma.updater.queue import pending_count


@dataclass(frozen=True, slots=True)
class Run:
    reason: str
    returncode: int | None  # None: still running
    results: list[dict]  # what `engramma consolidate --json` reported
    stopped_over_budget: bool = False


GRACE_S = 60.0  # after its budget, how long a run may take to stop by itself before it is ended


class ConsolidationTrigger:
    def __init__(self, store: str | os.PathLike, *, after_items: int | None = 32, idle_seconds: float | None = None,
                 budget_minutes: float = 10.0, max_items: int = 256, model: str | None = None,
                 lease_seconds: float = 120.0, extra_args: tuple[str, ...] = (), niceness: int = 10,
                 log: str | os.PathLike | None = None, grace_seconds: float = GRACE_S):
        """`after_items`: start once this many items are queued (None: never on count). `idle_seconds`: start
        when the agent reports being idle this long and anything is queued (None: never on idleness).
        `budget_minutes` and `max_items` bound each run; a run still going `grace_seconds` after its budget is
        ended. `niceness`: how much lower the run's CPU priority is than the agent's. `log`: the runs' output
        (default: consolidate.log in the store folder)."""
        self.store = Path(store)
        self.after_items, self.idle_seconds = after_items, idle_seconds
        self.budget_s, self.max_items, self.model = budget_minutes * 60, max_items, model
        self.lease_seconds, self.extra_args, self.niceness = lease_seconds, tuple(extra_args), niceness
        self.grace_s = grace_seconds
        self.log = Path(log) if log is not None else self.store / "consolidate.log"
        self._process: subprocess.Popen | None = None
        self._output = None  # the run's stdout (its --json results), a temporary file
        self._started = 0.0
        self._reason = ""
        self.last: Run | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def queued(self) -> int:
        store = open_existing(self.store)
        try:
            with store.transaction() as con:
                return pending_count(con)
        finally:
            store.close()

    def poll(self, *, idle_for: float = 0.0) -> str | None:
        """Call from the agent loop. Finishes or stops a run in progress; otherwise starts one if a condition
        holds, returning why (None when nothing started). Never blocks for long: one short read of the store."""
        if self._process is not None:
            self._collect()
            if self._process is not None:
                return None
        queued = self.queued()
        reason = None
        if self.after_items is not None and queued >= self.after_items:
            reason = f"{queued} items queued (trigger: {self.after_items})"
        elif self.idle_seconds is not None and queued and idle_for >= self.idle_seconds:
            reason = f"idle for {idle_for:.0f} s with {queued} items queued"
        if reason is not None:
            self.start(reason)
        return reason

    def start(self, reason: str = "asked") -> None:
        if self.running:
            raise RuntimeError("a consolidation run is already in progress")
        command = [sys.executable, "-m", "engramma.cli", "consolidate", str(self.store), "--json",
                   "--max-items", str(self.max_items), "--lease", str(self.lease_seconds),
                   "--max-minutes", f"{self.budget_s / 60:g}", *self.extra_args]
        if self.model:
            command += ["--model", self.model]
        if self.niceness and shutil.which("nice"):  # not preexec_fn: unsafe in a process that runs threads
            command = ["nice", "-n", str(self.niceness), *command]
        self._output = tempfile.TemporaryFile(mode="w+")
        with open(self.log, "a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} consolidate ({reason})\n")
            log.flush()
            self._process = subprocess.Popen(
                command, stdout=self._output, stderr=log, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                start_new_session=True)
        self._started, self._reason = time.monotonic(), reason

    def wait(self, timeout: float | None = None) -> Run | None:
        """Block until the run in progress ends (or `timeout`, or its budget and grace, pass); returns it."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.budget_s + self.grace_s + 30)
        while self._process is not None and time.monotonic() < deadline:
            self._collect()
            time.sleep(0.05)
        return self.last

    def _collect(self) -> None:
        process = self._process
        elapsed = time.monotonic() - self._started
        if process.poll() is None and elapsed <= self.budget_s + self.grace_s:
            return
        killed = process.poll() is None
        if killed:  # it did not stop at its budget: end it; its claimed items return when the lease ends
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._output.seek(0)
        out = self._output.read()
        self._output.close()
        try:
            results = json.loads(out) if out.strip() else []
        except ValueError:  # said, not dropped: the run's outcome is unknown
            results = [{"error": f"consolidate printed output that is not JSON: {out.strip()[-200:]!r}"}]
        stopped = killed or any(r.get("status") == "stopped" for r in results)
        if process.returncode not in (0, None) and not killed:
            results = [{"error": _last_line(self.log)}]
        self.last = Run(self._reason, process.returncode, results, stopped_over_budget=stopped)
        self._process = None


def _last_line(path: Path) -> str:
    """The last line a failed run wrote to its log: its one-line error."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
