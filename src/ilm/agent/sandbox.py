"""The code interpreter: one confined Python process per conversation, keeping state like a notebook.

`Sandbox.run(code)` never raises: whatever happens (an exception in the cell, a limit hit, a timeout, a
worker that cannot start) comes back as a `CellResult` whose `text` is written for the model. What the
worker guarantees, and on which systems, is in `ilm.agent._worker` and docs/agent.md. In short (Linux):

- no network: a fresh network namespace (only a loopback that is down); where none can be made, the
  sandbox refuses to start unless `allow_network=True` is passed;
- writes only beneath its own fresh temporary directory (Landlock; refuses to start without it unless
  `allow_unconfined_writes=True`);
- limits: CPU seconds per cell, address space, file size, number of processes; a wall-clock timeout per
  cell kills the whole worker (its PID namespace dies with it), the next call starts a fresh one;
- stdout and stderr captured together, capped at `output_bytes` (the rest counted, not kept).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

_WORKER = Path(__file__).with_name("_worker.py")


def _cleanup(live: dict, workdir: str) -> None:
    proc = live.get("proc")
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for fd in live.get("fds", []):
        try:
            os.close(fd)
        except OSError:
            pass
    live.clear()
    shutil.rmtree(workdir, ignore_errors=True)


SANDBOX_UID = 65534  # the outside uid a root host maps the sandbox's root to ("nobody")


def _map_ids(pid: int) -> int | None:
    """As a root host, map the worker's user namespace: its root -> SANDBOX_UID, host root -> its uid 1.

    Outside, its processes then belong to an unprivileged user, so RLIMIT_NPROC binds (the kernel exempts
    the host's root user); host root's files stay reachable (read the Python install; writes are stopped
    by Landlock). Returns the outside uid, or None when the worker must map its own uid."""
    if os.geteuid() != 0:
        return None
    try:
        Path(f"/proc/{pid}/uid_map").write_text(f"0 {SANDBOX_UID} 1\n1 0 1\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"0 {SANDBOX_UID} 1\n1 0 1\n")
    except OSError:
        return None
    return SANDBOX_UID


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 10  # per cell: then the cell gets an exception (CPUTimeExceeded), state kept
    session_cpu_seconds: int = 600  # the whole interpreter: then it is killed (state lost)
    memory_bytes: int = 1 << 30  # address space
    file_bytes: int = 64 << 20  # largest file a cell may write
    max_processes: int = 32
    wall_seconds: float = 30.0  # per cell
    output_bytes: int = 8192  # kept of stdout + stderr per cell


@dataclass
class CellResult:
    """What one cell did. `text` is the environment message the model reads."""

    output: str
    ok: bool
    error: str | None = None
    note: str | None = None
    truncated_bytes: int = 0
    stopped: str | None = None  # why the worker was stopped (state lost), if it was
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        parts = [self.output.rstrip("\n")] if self.output.strip() else []
        if self.truncated_bytes:
            parts.append(f"[output truncated: {self.truncated_bytes} more bytes not shown]")
        if self.stopped:
            parts.append(f"[{self.stopped}; the interpreter was restarted: its variables and imports are lost]")
        elif self.error and not self.output.strip():
            parts.append(self.error)
        if self.note:
            parts.append(f"[note: {self.note}]")
        if not parts:
            parts.append("[no output]" if self.ok else "[failed without output]")
        return "\n".join(parts)


class Sandbox:
    """A notebook-like Python interpreter in a confined process (started lazily, restarted after a kill).

    Use as a context manager or call `close()`: that kills the worker and deletes the work directory.
    """

    def __init__(self, limits: Limits = Limits(), allow_network: bool = False,
                 allow_unconfined_writes: bool = False, python: str = sys.executable):
        self.limits = limits
        self.allow_network = allow_network
        self.allow_unconfined_writes = allow_unconfined_writes
        self.python = python
        self.workdir = Path(tempfile.mkdtemp(prefix="ilm-sandbox-")).resolve()
        self.confinement: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._runner_pid: int | None = None
        self._cmd_w = self._reply_r = self._out_r = -1
        self._marker = ""
        self._pending = b""
        self._lost: str | None = None  # set after a kill: reported once by the next cell
        self._live: dict = {}  # what a forgotten Sandbox's finalizer must kill and close
        self._finalizer = weakref.finalize(self, _cleanup, self._live, str(self.workdir))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str | None:
        """Start the worker if it is not running. Returns None, or why it could not start."""
        if self._proc is not None and self._proc.poll() is None:
            return None
        self._stop()
        self._marker = f"\n\x00ilm-cell-done-{secrets.token_hex(8)}\x00\n"
        cmd_r, cmd_w = os.pipe()
        reply_r, reply_w = os.pipe()
        out_r, out_w = os.pipe()
        limits = self.limits
        cfg = {"cmd_in": cmd_r, "cmd_out": reply_w, "workdir": str(self.workdir), "marker": self._marker,
               "allow_network": self.allow_network, "allow_unconfined_writes": self.allow_unconfined_writes,
               "cpu_seconds": int(limits.cpu_seconds),
               "session_cpu_seconds": max(int(limits.session_cpu_seconds), int(limits.cpu_seconds) + 1), "memory_bytes": int(limits.memory_bytes),
               "file_bytes": int(limits.file_bytes), "max_processes": int(limits.max_processes)}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.workdir), "TMPDIR": str(self.workdir),
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
        try:
            self._proc = subprocess.Popen(
                [self.python, "-I", "-u", "-c", self.worker_source(), json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, pass_fds=(cmd_r, reply_w),
                cwd=self.workdir, env=env, start_new_session=True,
            )
        except OSError as err:
            for fd in (cmd_r, cmd_w, reply_r, reply_w, out_r, out_w):
                os.close(fd)
            return f"the interpreter could not start: {err}"
        for fd in (cmd_r, reply_w, out_w):
            os.close(fd)
        self._cmd_w, self._reply_r, self._out_r = cmd_w, reply_r, out_r
        self._live.update(proc=self._proc, fds=[cmd_w, reply_r, out_r])
        os.set_blocking(out_r, False)
        deadline = time.monotonic() + max(10.0, self.limits.wall_seconds)
        buffered = b""
        while True:
            line, buffered, _, _ = self._read_line(buffered, deadline)
            if line is None:
                self._stop()
                return "the interpreter did not start (it exited or timed out while starting)"
            message = json.loads(line)
            if "map" in message:
                os.write(cmd_w, (json.dumps({"mapped": _map_ids(message["map"])}) + "\n").encode())
            elif "pid" in message:
                self._runner_pid = message["pid"]
            elif message.get("ready"):
                self.confinement = message["confinement"]
                self._pending = buffered
                return None
            else:
                self._stop()
                return f"the interpreter refused to start: {message.get('error')}"

    def worker_source(self) -> str:
        return _WORKER.read_text()

    def close(self) -> None:
        """Kill the worker and delete the work directory (also done if the Sandbox is garbage-collected)."""
        self._stop()
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for fd in (self._cmd_w, self._reply_r, self._out_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._cmd_w = self._reply_r = self._out_r = -1
        self._proc, self._runner_pid = None, None
        self._live.clear()

    # ------------------------------------------------------------------ cells

    def _read_line(self, buffered: bytes, deadline: float,
                   sink: bytearray | None = None) -> tuple[str | None, bytes, bool, int]:
        """One line from the reply pipe (draining the output pipe meanwhile into `sink`).

        Returns (line or None on EOF/timeout, leftover bytes, timed_out, output bytes read)."""
        seen = 0
        while b"\n" not in buffered:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, buffered, True, seen
            ready, _, _ = select.select([self._reply_r, self._out_r], [], [], left)
            if self._out_r in ready:
                seen += self._drain(sink)
            if self._reply_r in ready:
                chunk = os.read(self._reply_r, 65536)
                if not chunk:
                    return None, buffered, False, seen
                buffered += chunk
        line, _, rest = buffered.partition(b"\n")
        return line.decode("utf-8", "replace"), rest, False, seen

    def _drain(self, sink: bytearray | None) -> int:
        n = 0
        while True:
            try:
                chunk = os.read(self._out_r, 65536)
            except BlockingIOError:
                return n
            if not chunk:
                return n
            n += len(chunk)
            if sink is not None:
                sink += chunk

    def run(self, code: str) -> CellResult:
        """Run one cell; never raises."""
        try:
            return self._run(code)
        except Exception as err:  # noqa: BLE001 (the model gets a message, the agent goes on)
            self._stop()
            return CellResult("", False, error=f"interpreter failure: {type(err).__name__}: {err}",
                              stopped="the interpreter failed")

    def _run(self, code: str) -> CellResult:
        lost, self._lost = self._lost, None
        why = self.start()
        if why is not None:
            return CellResult("", False, error=why)
        self._drain(None)  # whatever earlier cells' leftovers printed late
        os.write(self._cmd_w, (json.dumps({"code": code}) + "\n").encode())
        sink = bytearray()
        deadline = time.monotonic() + self.limits.wall_seconds
        line, self._pending, timed_out, _ = self._read_line(self._pending, deadline, sink)
        marker = self._marker.encode()
        if line is not None:  # the worker wrote the marker before the reply: read up to it
            end = time.monotonic() + 2.0
            while marker not in sink and time.monotonic() < end:
                ready, _, _ = select.select([self._out_r], [], [], end - time.monotonic())
                if ready and self._drain(sink) == 0:
                    break
        raw = bytes(sink).split(marker, 1)[0]
        cap = self.limits.output_bytes
        output = raw[:cap].decode("utf-8", "replace")
        result = CellResult(output, True, truncated_bytes=max(0, len(raw) - cap), notes=list(self.confinement))
        if lost:
            result.output = f"[{lost}; this is a fresh interpreter]\n" + result.output
        if line is None:
            result.ok = False
            result.stopped = self._why_stopped(timed_out)
            self._stop()
            self._lost = "the previous interpreter was stopped"
            return result
        reply = json.loads(line)
        result.ok, result.error, result.note = reply["ok"], reply["error"], reply["note"]
        return result

    def _why_stopped(self, timed_out: bool) -> str:
        if timed_out:
            return f"stopped: the cell ran past the wall-clock limit of {self.limits.wall_seconds:g} s"
        code = None
        if self._proc is not None:
            try:
                code = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        signum = code - 128 if code is not None and code > 128 else None
        if signum == signal.SIGXCPU:
            return f"stopped: the cell used more than its CPU time limit of {self.limits.cpu_seconds} s"
        if signum == signal.SIGKILL:
            return (f"stopped: the interpreter was killed (its {self.limits.session_cpu_seconds} s of CPU time "
                    "in all, or memory)")
        if signum is not None:
            return f"stopped: the interpreter died of signal {signal.Signals(signum).name}"
        return f"stopped: the interpreter exited (status {code})"
