"""The code interpreter: one jailed Python process per conversation, keeping state like a notebook.

`Sandbox.run(code)` never raises: whatever happens (an exception in the cell, a limit hit, a timeout, a
jail that cannot be built) comes back as a `CellResult` whose `text` is written for the model.

The jail is bubblewrap's (`ilm.agent.jail`): its own user (uid 65534, no other host uid mapped), PID,
network, IPC and mount namespaces, a private /proc, read-only binds of /usr and the interpreter only, a
tmpfs of `Limits.disk_bytes` as the one writable directory, no capabilities, a seccomp filter, no
inherited fds or environment. Inside, a supervisor that never runs cell code holds the only channel
to us (`ilm.agent._worker`). Where the jail cannot be built, `start()` says why in one line and the
interpreter does not run, unless the caller passed `unconfined=True`. docs/agent.md has the details.
"""

from __future__ import annotations

import json
import os
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

from ilm.agent import jail

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


def _read_info(fd: int, deadline: float) -> int | None:
    """bwrap's --info-fd JSON: the host pid of the jail's first process."""
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 10  # per cell: then the cell gets an exception (CPUTimeExceeded), state kept
    session_cpu_seconds: int = 600  # the whole interpreter: then it is killed (state lost)
    memory_bytes: int = 1 << 30  # address space
    file_bytes: int = 64 << 20  # largest file a cell may write
    disk_bytes: int = 256 << 20  # all files together: the size of the jail's tmpfs (host memory)
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
    """A notebook-like Python interpreter in a jail (started lazily, restarted after a kill).

    Use as a context manager or call `close()`: that kills the jail and its files. `ro_paths` are
    host files or directories the cell may read (bound read-only at the same path); `unconfined=True`
    runs the interpreter as a plain process where the jail cannot be built (limits only, no jail).
    """

    def __init__(self, limits: Limits = Limits(), allow_network: bool = False, unconfined: bool = False,
                 python: str = sys.executable, ro_paths: tuple[str, ...] | list[str] = ()):
        self.limits = limits
        self.allow_network = allow_network
        self.unconfined = unconfined
        self.python = python
        self.ro_paths = [os.path.realpath(p) for p in ro_paths]
        self._hostdir = tempfile.mkdtemp(prefix="ilm-sandbox-")  # unconfined: the work directory; jailed: staging
        self.workdir = Path(self._hostdir).resolve() if unconfined else Path(jail.JAIL_TMP)
        self.confinement: list[str] = []
        self.jail_pid: int | None = None  # the supervisor's pid as the host sees it (PID 1 inside the jail)
        self._proc: subprocess.Popen | None = None
        self._cmd_w = self._reply_r = self._out_r = -1
        self._pending = b""
        self._lost: str | None = None  # set after a kill: reported once by the next cell
        self._live: dict = {}  # what a forgotten Sandbox's finalizer must kill and close
        self._finalizer = weakref.finalize(self, _cleanup, self._live, self._hostdir)

    # ------------------------------------------------------------------ lifecycle

    def _command(self, cfg: dict, seccomp_fd: int, info_fd: int) -> list[str] | str:
        """The command that starts the worker (in its jail unless unconfined), or why it cannot."""
        worker = ["-I", "-u", "-c", self.worker_source(), json.dumps(cfg)]
        if self.unconfined:
            return [self.python, *worker]
        bwrap = jail.find_bwrap()
        if bwrap is None:
            return "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)"
        try:
            exe, dirs = jail.interpreter_paths(self.python)
        except (OSError, subprocess.SubprocessError, IndexError) as err:
            return f"cannot locate the interpreter {self.python}: {err}"
        sources = dirs + [p for p in self.ro_paths if p not in dirs]
        as_root = os.geteuid() == 0
        binds = [(f"{self._hostdir}/{i}" if as_root else src, src) for i, src in enumerate(sources)]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": jail.JAIL_TMP, "TMPDIR": jail.JAIL_TMP,
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        argv = jail.bwrap_argv(bwrap, binds, allow_network=self.allow_network, disk_bytes=self.limits.disk_bytes,
                               seccomp_fd=seccomp_fd, info_fd=info_fd, env=env, command=[exe, *worker])
        return jail.launch_command(sys.executable, self._hostdir, sources, argv) if as_root else argv

    def _notes(self) -> list[str]:
        if self.unconfined:
            return [("NOT jailed (unconfined=True): the cell runs as this user, sees its files and network; "
                     "only the rlimits apply")]
        net = "network allowed" if self.allow_network else "no network"
        return [(f"bubblewrap jail: uid {jail.SANDBOX_UID}, private /proc, read-only interpreter, "
                 f"{self.limits.disk_bytes >> 20} MiB tmpfs at {jail.JAIL_TMP}, {net}, no capabilities, seccomp")]

    def start(self) -> str | None:
        """Start the worker if it is not running. Returns None, or why it could not start (one line)."""
        if self._proc is not None and self._proc.poll() is None:
            return None
        self._stop()
        why = self._start()
        if why is not None and not self.unconfined:
            why = (f"the interpreter's jail could not be built: {why}; pass unconfined=True "
                   "(ilm chat --unconfined-interpreter) to run code without it")
        return why

    def _start(self) -> str | None:
        limits = self.limits
        program = b"" if self.unconfined else jail.seccomp_filter()
        if isinstance(program, str):
            return program
        cmd_r, cmd_w = os.pipe()
        reply_r, reply_w = os.pipe()
        out_r, out_w = os.pipe()
        info_r, info_w = os.pipe()
        seccomp_fd = os.memfd_create("ilm-seccomp", 0)
        os.write(seccomp_fd, program)
        os.lseek(seccomp_fd, 0, os.SEEK_SET)
        cfg = {"cmd_in": cmd_r, "reply_out": reply_w, "workdir": str(self.workdir),
               "allow_network": self.allow_network, "cpu_seconds": int(limits.cpu_seconds),
               "session_cpu_seconds": max(int(limits.session_cpu_seconds), int(limits.cpu_seconds) + 1),
               "memory_bytes": int(limits.memory_bytes), "file_bytes": int(limits.file_bytes),
               "disk_bytes": int(limits.disk_bytes), "max_processes": int(limits.max_processes)}
        child_fds = (cmd_r, reply_w, out_w, info_w, seccomp_fd)
        command = self._command(cfg, seccomp_fd, info_w)
        if isinstance(command, str):
            for fd in (*child_fds, cmd_w, reply_r, out_r, info_r):
                os.close(fd)
            return command
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.workdir), "TMPDIR": str(self.workdir),
               "LANG": "C.UTF-8"}
        try:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w,
                                          pass_fds=(cmd_r, reply_w, info_w, seccomp_fd), env=env,
                                          cwd=self._hostdir, start_new_session=True)
        except OSError as err:
            for fd in (*child_fds, cmd_w, reply_r, out_r, info_r):
                os.close(fd)
            return f"the interpreter could not start: {err}"
        for fd in child_fds:
            os.close(fd)
        self._cmd_w, self._reply_r, self._out_r = cmd_w, reply_r, out_r
        self._live.update(proc=self._proc, fds=[cmd_w, reply_r, out_r])
        os.set_blocking(out_r, False)
        deadline = time.monotonic() + max(10.0, limits.wall_seconds)
        self.jail_pid = self._proc.pid if self.unconfined else _read_info(info_r, deadline)
        os.close(info_r)
        sink = bytearray()
        line, self._pending, _, _ = self._read_line(b"", deadline, sink)
        message = json.loads(line) if line else {}
        if message.get("ready"):
            self.confinement = self._notes()
            return None
        self._drain(sink)
        self._stop()
        said = [t.strip() for t in bytes(sink).decode("utf-8", "replace").splitlines() if t.strip()]
        return message.get("error") or (said[-1] if said else "it exited or timed out while starting")

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
        self._proc, self.jail_pid = None, None
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
        """Read what the output pipe holds now; keep at most `output_bytes` (+3, for a split character)."""
        n = 0
        keep = self.limits.output_bytes + 3
        while True:
            try:
                chunk = os.read(self._out_r, 65536)
            except BlockingIOError:
                return n
            if not chunk:
                return n
            n += len(chunk)
            if sink is not None and len(sink) < keep:
                sink += chunk[: keep - len(sink)]

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
        line, self._pending, timed_out, seen = self._read_line(self._pending, deadline, sink)
        # The supervisor replies only once the cell's processes are gone: its output is all in the pipe.
        seen += self._drain(sink)
        cap = self.limits.output_bytes
        output = bytes(sink)[:cap].decode("utf-8", "replace")
        result = CellResult(output, True, truncated_bytes=max(0, seen - cap), notes=list(self.confinement))
        if lost:
            result.output = f"[{lost}; this is a fresh interpreter]\n" + result.output
        if line is None:
            result.ok = False
            result.stopped = self._why_stopped(timed_out)
            self._stop()
            self._lost = "the previous interpreter was stopped"
            return result
        reply = json.loads(line)
        if reply.get("forged"):
            result.ok, result.error = False, "the cell wrote to the interpreter's control channel"
            result.stopped = "stopped: the cell wrote its own report to the interpreter's control channel"
            self._stop()
            self._lost = "the previous interpreter was stopped"
            return result
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
