"""The code interpreter's worker: a supervisor that never runs a cell, and a kernel that runs them all.

Run by `ilm.agent.sandbox` as `python -I -u -c <this file's text> <config JSON>`, inside the jail (or, when
the user opted out of it, as a plain process); it imports nothing from ilm. Two processes:

- the supervisor (PID 1 of the jail) holds the only channel to the host (`cmd_in`, `reply_out`). It
  makes itself non-dumpable, so no process of the jail can open its fds or memory through /proc, and
  it never runs cell code. It forks:
- the kernel, which closes the host's channel before anything else, sets the limits and runs the cells
  in one namespace, like a notebook. After each cell it writes one report line ({"ok", "error",
  "note"}) to the supervisor and blocks reading the next cell.

The supervisor takes a report only when the kernel's main thread is seen, from /proc, blocked reading
its command pipe again, and no second report has come: a cell that writes a report of its own (and then
raises, or returns) produces two, which is answered as {"forged": true}. It then kills every process
the cell left behind (it is their subreaper), waits until they are reaped, and only then replies to
the host, so all of the cell's output is already in the output pipe. A kernel that dies makes the
supervisor exit with the kernel's status; the host restarts the jail.
"""

import ast
import ctypes
import errno
import json
import os
import platform
import resource
import select
import signal
import sys
import time
import traceback

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(platform.machine())  # /proc/PID/syscall's number for read

libc = ctypes.CDLL(None, use_errno=True)


def send(fd, message):
    os.write(fd, (json.dumps(message) + "\n").encode())


def set_limits(cfg):
    limits = [(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["session_cpu_seconds"]),
              (resource.RLIMIT_AS, cfg["memory_bytes"], cfg["memory_bytes"]),
              (resource.RLIMIT_FSIZE, cfg["file_bytes"], cfg["file_bytes"]),
              (resource.RLIMIT_NPROC, cfg["max_processes"], cfg["max_processes"]),
              (resource.RLIMIT_CORE, 0, 0)]
    for kind, soft, hard in limits:
        resource.setrlimit(kind, (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write then fails with EFBIG, not a kill
    signal.signal(signal.SIGXCPU, _cpu_exceeded)


class CPUTimeExceeded(BaseException):
    """The cell used up its CPU seconds (RLIMIT_CPU's soft limit, moved before each cell; the hard limit,
    the whole kernel's CPU seconds, kills)."""


def _cpu_exceeded(signum, frame):
    raise CPUTimeExceeded("the cell used up its CPU time limit")


def hint(exc, cfg):
    """A sentence on which limit an exception hit, for the model."""
    if isinstance(exc, CPUTimeExceeded):
        return f"the CPU time limit is {cfg['cpu_seconds']} s per cell"
    if isinstance(exc, MemoryError):
        return f"the memory limit is {cfg['memory_bytes'] // 2**20} MiB"
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    if code == errno.EAGAIN and "fork" in "".join(traceback.format_tb(exc.__traceback__)) + str(exc):
        return f"the process limit is {cfg['max_processes']}"
    if isinstance(exc, BlockingIOError) and code == errno.EAGAIN:
        return f"the process limit ({cfg['max_processes']}) may have been reached"
    if code == errno.EFBIG:
        return f"the file size limit is {cfg['file_bytes']} bytes"
    if code == errno.ENOSPC:
        return f"the working directory's disk limit is {cfg['disk_bytes']} bytes"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EXDEV, errno.ENOENT) and exc.filename:
        path = os.path.realpath(str(exc.filename))
        if path != cfg["workdir"] and not path.startswith(cfg["workdir"].rstrip("/") + "/"):
            return f"only the working directory {cfg['workdir']} is writable, and little else is visible"
    if not cfg["allow_network"] and (
        code in (errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EACCES,
                 errno.EPERM, errno.EADDRNOTAVAIL) or type(exc).__name__ == "gaierror"
    ):
        return "this interpreter has no network access"
    return None


def run_cell(code, env):
    """Exec `code` in `env`; print the last expression's repr like a notebook. Returns the exception."""
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), env)  # noqa: S102 (running the cell is the point)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), env)
            if value is not None:
                print(repr(value))
    except BaseException as exc:  # noqa: BLE001 (the cell's failure is the result)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
            tb = tb.tb_next  # drop the worker's own frames
        frames = [f for f in traceback.extract_tb(tb) if f.filename != "<string>"]  # not the worker's
        text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)) if frames else ""
        sys.stderr.write(text + "".join(traceback.format_exception_only(type(exc), exc)))
        return exc
    return None


def reap_children(*_):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def kernel(cfg, code_r, report_w):
    """Run cells forever (the host's channel is already closed here)."""
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # so the supervisor, not dumpable itself, may read our /proc
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # unconfined, nothing else would end us
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        set_limits(cfg)
    except (OSError, ValueError) as e:
        send(report_w, {"ready": False, "error": f"setrlimit: {e}"})
        os._exit(3)
    send(report_w, {"ready": True})
    main_pid = os.getpid()
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    stdout, stderr = sys.stdout, sys.stderr
    pending = b""
    while True:
        signal.signal(signal.SIGCHLD, reap_children)  # idle: reap what the supervisor kills
        reap_children()
        while b"\n" not in pending:
            chunk = os.read(code_r, 1 << 16)  # where the supervisor expects to find us between cells
            if not chunk:
                os._exit(0)
            pending += chunk
        line, _, pending = pending.partition(b"\n")
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            code = json.loads(line)["code"]
        except (ValueError, KeyError, TypeError):  # not from the supervisor: a second report tells it so
            send(report_w, {"ok": False, "error": "malformed request", "note": None})
            continue
        usage = resource.getrusage(resource.RUSAGE_SELF)  # this cell gets cpu_seconds from now (soft limit)
        soft = min(int(usage.ru_utime + usage.ru_stime) + cfg["cpu_seconds"] + 1, cfg["session_cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cfg["session_cpu_seconds"]))
        exc = run_cell(code, env)
        if os.getpid() != main_pid:  # a forked child of the cell finished the cell's code: it ends here
            os._exit(1 if exc else 0)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 (a cell may have replaced or closed them)
                pass
        sys.stdout, sys.stderr = stdout, stderr
        report = {"ok": exc is None, "error": None, "note": None}
        if exc is not None:
            report["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            report["note"] = hint(exc, cfg)
        send(report_w, report)


# ------------------------------------------------------------------ the supervisor


class KernelDied(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


class Supervisor:
    def __init__(self, cfg, kernel_pid, code_w, report_r, kernel_code_fd):
        self.cfg, self.kpid, self.code_w, self.report_r = cfg, kernel_pid, code_w, report_r
        self.kernel_code_fd = kernel_code_fd
        self.buffer = b""
        os.set_blocking(report_r, False)

    def reap(self):
        """Reap our children (the kernel, and orphans we adopted); raise KernelDied if the kernel ended."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.kpid:
                raise KernelDied(os.waitstatus_to_exitcode(status))

    def read_reports(self, timeout):
        """Read what the kernel wrote; return the complete lines."""
        ready, _, _ = select.select([self.report_r], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.report_r, 1 << 16)
            except BlockingIOError:
                chunk = b"x"
            self.buffer += chunk if chunk else b""
        self.reap()
        lines = []
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            lines.append(line)
        return lines

    def kernel_waits(self):
        """Whether the kernel's main thread is blocked reading its command pipe (or, where /proc does not
        say, at least sleeping)."""
        try:
            with open(f"/proc/{self.kpid}/syscall") as f:
                fields = f.read().split()  # "running", or the blocked syscall's number and arguments
        except OSError:
            fields = None
        if READ_SYSCALL is not None and fields is not None:
            return len(fields) > 1 and fields[0] == str(READ_SYSCALL) and int(fields[1], 16) == self.kernel_code_fd
        try:
            with open(f"/proc/{self.kpid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"S"
        except (OSError, IndexError):
            return False

    def leftovers(self):
        """Every process below us but the kernel (the kernel's own children included)."""
        children = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    rest = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(rest[1]), []).append(int(name))
        found, stack = [], [os.getpid()]
        while stack:
            for pid in children.get(stack.pop(), []):
                stack.append(pid)
                if pid != self.kpid:
                    found.append(pid)
        return found

    def kill_leftovers(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.leftovers()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.reap()
            time.sleep(0.001)

    def ready(self):
        while True:
            lines = self.read_reports(0.1)
            if lines:
                return json.loads(lines[0])

    def cell(self, line):
        """Run one cell; returns the reply for the host."""
        if self.read_reports(0) or self.buffer:  # bytes from a previous cell's leftovers
            return {"forged": True}
        os.write(self.code_w, line)
        reports = []
        while not reports:
            reports = self.read_reports(0.05)
        while not self.kernel_waits():
            reports += self.read_reports(0.001)
        self.kill_leftovers()
        reports += self.read_reports(0)
        if len(reports) != 1 or self.buffer:
            return {"forged": True}
        try:
            report = json.loads(reports[0])
            return {"ok": bool(report["ok"]), "error": report["error"], "note": report["note"]}
        except (ValueError, KeyError, TypeError):
            return {"forged": True}


def close_other_fds(keep):
    last = 2
    for fd in sorted(keep):
        os.closerange(last + 1, fd)
        last = fd
    os.closerange(last + 1, 1 << 16)


def main():
    cfg = json.loads(sys.argv[1])
    cmd_in, reply_out = cfg["cmd_in"], cfg["reply_out"]
    close_other_fds({cmd_in, reply_out})
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no process of the jail may open our fds or memory
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of the cell become ours, to kill and reap
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as PID 1 we get only the signals we handle: none
    code_r, code_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (cmd_in, reply_out, code_w, report_r):
            os.close(fd)
        kernel(cfg, code_r, report_w)
    os.close(code_r)
    os.close(report_w)
    sup = Supervisor(cfg, pid, code_w, report_r, code_r)
    try:
        send(reply_out, sup.ready())
        reader = os.fdopen(cmd_in, "rb")
        for line in reader:
            reply = sup.cell(line)
            send(reply_out, reply)
            if reply.get("forged"):
                break
    except KernelDied as died:
        sup.kpid = -1
        sup.kill_leftovers()
        os._exit(died.status if died.status >= 0 else 128 - died.status)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    sup.kpid = -1
    sup.kill_leftovers()
    os._exit(0)


if __name__ == "__main__":
    main()
