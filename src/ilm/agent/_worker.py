"""The code interpreter's worker: confines itself, then runs cells in one namespace, like a notebook.

Run by `ilm.agent.sandbox` as `python -I -u -c <this file's text> <config JSON>`; it imports nothing from
ilm (the sandbox may not be able to read the source tree). Steps, in order:

1. unshare a user, network and PID namespace (root inside, mapped to the caller's uid outside), or a
   network namespace alone, or none (only if the caller allowed the network);
2. no_new_privs, then Landlock: writes (create, write, truncate, remove, rename, link) only beneath the
   work directory and to /dev/null; with Landlock ABI >= 4 no TCP bind/connect either; with ABI >= 6 no
   signals or abstract unix sockets out of the sandbox;
3. fork: the child is PID 1 of the new PID namespace (it dies with this process: PDEATHSIG), sets its
   rlimits (CPU, address space, file size, processes, no core files) and serves cells.

Protocol: requests arrive on fd `cmd_in` as one JSON line ({"code": ...}); after a cell the worker writes
the marker line to fd 1 (the captured output pipe, shared with fd 2) and then one JSON line on
`cmd_out`: {"ok": bool, "error": "ExcType: message" | null, "note": ...}. Before the first request it
sends {"pid": <the cell runner's pid as the host sees it>}, then {"ready": true, "confinement": [...]} or {"ready": false, "error": ...}.
"""

import ast
import ctypes
import errno
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446

FS_WRITE_FILE, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
FS_MAKE = (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)  # char dir reg sock fifo blk sym
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _err(what):
    e = ctypes.get_errno()
    return f"{what}: {os.strerror(e)}"


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _read_line(fd):
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        data += byte
    return data


def unshare_namespaces(allow_network, cmd_in, cmd_out):
    """User+net+pid namespaces where possible. Returns (notes, pid_namespace, error).

    The host side is asked to write the id maps first: a root host maps our root to an unprivileged uid
    (the kernel never applies RLIMIT_NPROC to the host's root user). Otherwise we map our own uid."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) == 0:
        os.write(cmd_out, (json.dumps({"map": os.getpid()}) + "\n").encode())
        mapped = json.loads(_read_line(cmd_in) or b"{}").get("mapped")
        if mapped:  # become the namespace's root, i.e. the unprivileged uid outside
            try:
                os.setgroups([])
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            except OSError as e:
                return [], False, f"cannot switch to the namespace's root: {e}"
        else:
            try:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"0 {uid} 1")
                _write("/proc/self/gid_map", f"0 {gid} 1")
            except OSError as e:
                return [], False, f"cannot map the user namespace ids: {e}"
        return ["user, network and PID namespaces" + (f" (uid {mapped} outside)" if mapped else "")], True, None
    first = _err("unshare(user+net+pid)")
    if libc.unshare(CLONE_NEWNET) == 0:
        return ["network namespace"], False, None
    second = _err("unshare(net)")
    if allow_network:
        return ["no namespaces: the network is reachable (allowed by the caller)"], False, None
    return [], False, f"no network namespace available ({first}; {second}); the caller may pass allow_network=True"


def landlock(workdir, allow_network):
    """Confine writes to `workdir` (and TCP, signals when the ABI has them). Returns (note, error)."""
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return None, _err("Landlock is not available")
    write = FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE
    if abi >= 2:
        write |= FS_REFER
    if abi >= 3:
        write |= FS_TRUNCATE
    net = 0 if allow_network or abi < 4 else NET_BIND_TCP | NET_CONNECT_TCP
    scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0
    attr = (ctypes.c_uint64 * 3)(write, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    fd = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        return None, _err("landlock_create_ruleset")

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    for path, rights in ((workdir, write), ("/dev/null", FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0))):
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = PathBeneath(rights, pfd)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, fd, 1, ctypes.byref(rule), 0) != 0:
            return None, _err(f"landlock_add_rule({path})")
        os.close(pfd)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return None, _err("prctl(NO_NEW_PRIVS)")
    if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0) != 0:
        return None, _err("landlock_restrict_self")
    os.close(fd)
    extra = (", TCP" if net else "") + (", signals out" if scoped else "")
    return f"Landlock ABI {abi}: writes only in the work directory{extra}", None


def set_limits(cfg):
    limits = [(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["session_cpu_seconds"]),
              (resource.RLIMIT_AS, cfg["memory_bytes"], cfg["memory_bytes"]),
              (resource.RLIMIT_FSIZE, cfg["file_bytes"], cfg["file_bytes"]),
              (resource.RLIMIT_NPROC, cfg["max_processes"], cfg["max_processes"]),
              (resource.RLIMIT_CORE, 0, 0)]
    for kind, soft, hard in limits:
        resource.setrlimit(kind, (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write then fails with EFBIG, not a kill
    signal.signal(signal.SIGXCPU, _cpu_exceeded)  # PID 1 of a namespace ignores a default-action SIGXCPU


class CPUTimeExceeded(BaseException):
    """The cell used up its CPU seconds (RLIMIT_CPU's soft limit, moved before each cell; the hard limit,
    the whole worker's CPU seconds, kills)."""


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
    if code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EXDEV) and exc.filename:
        path = os.path.realpath(str(exc.filename))
        if not path.startswith(cfg["workdir"]):
            return f"only the working directory {cfg['workdir']} is writable (and not every file is readable)"
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


def tidy(in_pid_namespace):
    """Kill what the cell left running (only as PID 1 of our own namespace) and reap the orphans."""
    for _ in range(20):
        if in_pid_namespace and os.getpid() == 1:
            try:
                os.kill(-1, signal.SIGKILL)  # every process of this namespace but PID 1
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        if not in_pid_namespace:
            return
        os.sched_yield()


def serve(cfg, cmd_in, cmd_out, in_pid_namespace):
    main_pid = os.getpid()
    def close_protocol():  # a cell's children never speak the protocol
        for fd in (cmd_in, cmd_out):
            try:
                os.close(fd)
            except OSError:
                pass

    os.register_at_fork(after_in_child=close_protocol)
    reader = os.fdopen(cmd_in, "r", encoding="utf-8")
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    marker = cfg["marker"]
    stdout, stderr = sys.stdout, sys.stderr
    for line in reader:
        request = json.loads(line)
        usage = resource.getrusage(resource.RUSAGE_SELF)  # this cell gets cpu_seconds from now (soft limit)
        soft = min(int(usage.ru_utime + usage.ru_stime) + cfg["cpu_seconds"] + 1, cfg["session_cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cfg["session_cpu_seconds"]))
        exc = run_cell(request["code"], env)
        if os.getpid() != main_pid:  # a forked child of the cell finished the cell's code: it ends here
            os._exit(1 if exc else 0)
        tidy(in_pid_namespace)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 (a cell may have replaced or closed them)
                pass
        sys.stdout, sys.stderr = stdout, stderr
        os.write(1, marker.encode())
        reply = {"ok": exc is None, "error": None, "note": None}
        if exc is not None:
            reply["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            reply["note"] = hint(exc, cfg)
        os.write(cmd_out, (json.dumps(reply) + "\n").encode())


def main():
    cfg = json.loads(sys.argv[1])
    cmd_in, cmd_out = cfg["cmd_in"], cfg["cmd_out"]

    def fail(message):
        os.write(cmd_out, (json.dumps({"ready": False, "error": message}) + "\n").encode())
        sys.exit(3)

    notes, in_pid_namespace, error = unshare_namespaces(cfg["allow_network"], cmd_in, cmd_out)
    if error:
        fail(error)
    note, error = landlock(cfg["workdir"], cfg["allow_network"])
    if error and not cfg["allow_unconfined_writes"]:
        fail(error + "; writes outside the work directory cannot be blocked (allow_unconfined_writes=True runs anyway)")
    notes.append(note or "writes NOT confined (allowed by the caller)")
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid:  # the outer process only waits; it dies with the namespace's PID 1 and vice versa
        os.write(cmd_out, (json.dumps({"pid": pid}) + "\n").encode())  # the host's pid of the cell runner
        os.write(go_w, b"1")
        os.close(cmd_in)
        os.close(cmd_out)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(128 - code if code < 0 else code)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.read(go_r, 1)  # the outer process has sent our pid first
    os.close(go_r)
    os.close(go_w)
    try:
        set_limits(cfg)
    except (OSError, ValueError) as e:
        fail(f"setrlimit: {e}")
    os.write(cmd_out, (json.dumps({"ready": True, "confinement": notes}) + "\n").encode())
    serve(cfg, cmd_in, cmd_out, in_pid_namespace)


if __name__ == "__main__":
    main()
