"""The code interpreter's jail: a bubblewrap command line, a seccomp filter, and (as root) a launcher.

What is confined and why is in docs/agent.md. The parts:

- `seccomp_filter()`: a classic-BPF program compiled by libseccomp (the library bubblewrap, flatpak and
  systemd use; Debian's `libseccomp2`, called through ctypes, so the syscall tables per architecture are
  its job, not ours). bwrap loads it on the jailed process with `--seccomp FD`.
- `bwrap_argv()`: new user, PID, network, IPC, UTS and cgroup namespaces; a private /proc; read-only
  binds of /usr and the interpreter's own directories only; one size-capped tmpfs (`/tmp`) as the only
  writable place; every capability dropped; no environment but what we set.
- As root, bwrap cannot be allowed to map the host's root user into the jail (the jail's files would
  then be host root's). So the host runs a small launcher instead: it makes a private mount namespace,
  bind-mounts the interpreter's directories (which may live under root's 0700 home) onto a staging
  tmpfs that any user can traverse, drops to `SANDBOX_UID`, and execs bwrap, which maps only that
  unprivileged uid. The staging mounts exist only in the launcher's namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import json
import os
import shutil
import sys
from pathlib import Path

SANDBOX_UID = 65534  # "nobody": the only host uid the jail's user namespace maps
JAIL_TMP = "/tmp"  # the jail's one writable directory: a tmpfs of Limits.disk_bytes

# ------------------------------------------------------------------ seccomp (via libseccomp)

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_LT, SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 2, 4, 6, 7
AF_INET, AF_INET6 = 2, 10
CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

# Denied outright (EPERM): debugging other processes, new namespaces, mounts, kernel keyrings, BPF,
# perf, userfaultfd, io_uring (its requests bypass seccomp), modules, kexec, handles to host files.
DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "unshare", "setns",
          "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
          "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
          "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
          "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
          "name_to_handle_at", "acct", "swapon", "swapoff", "reboot", "quotactl", "syslog", "vhangup")


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


@functools.cache
def seccomp_filter() -> bytes | str:
    """The jail's seccomp program (bytes), or why it cannot be built (str).

    On top of DENIED: `socket()` only for AF_INET/AF_INET6 (no unix, netlink, packet or vsock sockets;
    `socketpair()` stays allowed: its unnamed pair reaches nothing outside), `clone()` without any
    CLONE_NEW* flag, and `clone3()` answers ENOSYS (its flags sit in memory a filter cannot read; libc
    then falls back to `clone()`). Other architectures' syscall ABIs are killed (libseccomp's default)."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return "libseccomp is not installed (Debian: apt-get install libseccomp2)"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        return "seccomp_init failed"

    def rule(action: int, syscall: str, *cmps: tuple[int, int, int, int]) -> str | None:
        nr = lib.seccomp_syscall_resolve_name(syscall.encode())
        if nr < 0:
            return None  # unknown to this architecture or libseccomp: nothing to deny
        arr = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        return None if rc == 0 else f"seccomp rule for {syscall}: {os.strerror(-rc)}"

    try:
        eperm = _errno_action(errno.EPERM)
        problems = [rule(eperm, name) for name in DENIED]
        # every family but AF_INET (2) and AF_INET6 (10); one comparison per argument and rule
        problems.append(rule(eperm, "socket", (0, SCMP_CMP_LT, AF_INET, 0)))
        problems += [rule(eperm, "socket", (0, SCMP_CMP_EQ, family, 0)) for family in range(AF_INET + 1, AF_INET6)]
        problems.append(rule(eperm, "socket", (0, SCMP_CMP_GT, AF_INET6, 0)))
        problems += [rule(eperm, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag)) for flag in CLONE_NS_FLAGS]
        problems.append(rule(_errno_action(errno.ENOSYS), "clone3"))
        if any(problems):
            return next(p for p in problems if p)
        fd = os.memfd_create("ilm-seccomp")
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc != 0:
                return f"seccomp_export_bpf: {os.strerror(-rc)}"
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 1 << 20)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


# ------------------------------------------------------------------ what the interpreter needs


@functools.cache
def interpreter_paths(python: str) -> tuple[str, list[str]]:
    """(the executable to run inside, the directories to bind read-only): its install and its venv.

    The executable is named through the venv's real directory (not a symlink to it), so that inside,
    where only real paths are bound, Python still finds `pyvenv.cfg` and the venv's site-packages."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        prefix, base = sys.prefix, sys.base_prefix
    else:
        import subprocess

        out = subprocess.run([python, "-I", "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.split("\n")
        prefix, base = out[0], out[1]
    prefix, base = os.path.realpath(prefix), os.path.realpath(base)
    exe = str(Path(prefix) / "bin" / Path(python).name) if prefix != base else os.path.realpath(python)
    return exe, sorted({prefix, base})


def system_links() -> list[tuple[str, str | None]]:
    """/bin, /lib, ...: (path, symlink target) where the host links them into /usr, else (path, None)."""
    found = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            found.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            found.append((top, None))
    return found


NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl", "/etc/ca-certificates")


def bwrap_argv(bwrap: str, binds: list[tuple[str, str]], *, allow_network: bool, disk_bytes: int,
               seccomp_fd: int, info_fd: int, env: dict[str, str], command: list[str]) -> list[str]:
    """bwrap's command line. `binds`: (host source, path inside), all read-only."""
    argv = [bwrap, "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--unshare-pid",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--disable-userns", "--die-with-parent",
            "--new-session", "--as-pid-1", "--cap-drop", "ALL", "--clearenv"]
    argv += [] if allow_network else ["--unshare-net"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    # the tmpfs first: a bind below /tmp (a host temp directory) then lands inside it, read-only
    argv += ["--perms", "1777", "--size", str(int(disk_bytes)), "--tmpfs", JAIL_TMP, "--ro-bind", "/usr", "/usr"]
    for path, target in system_links():
        argv += ["--symlink", target, path] if target else ["--ro-bind", path, path]
    for source, dest in binds:
        argv += ["--ro-bind", source, dest]
    if allow_network:
        for path in NETWORK_FILES:
            argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", JAIL_TMP, "--seccomp", str(seccomp_fd), "--info-fd", str(info_fd),
             "--", *command]
    return argv


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


# ------------------------------------------------------------------ the root host's launcher

LAUNCHER = r'''
import ctypes, json, os, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def check(rc, what):
    if rc != 0:
        sys.stderr.write("ilm jail launcher: %s: %s\n" % (what, os.strerror(ctypes.get_errno())))
        os._exit(70)
check(libc.unshare(0x00020000), "unshare(mount namespace)")
check(libc.mount(None, b"/", None, (1 << 14) | (1 << 18), None), "make mounts private")
stage = cfg["stage"]
check(libc.mount(b"tmpfs", stage.encode(), b"tmpfs", 0, b"mode=0755,size=64k"), "staging tmpfs")
for i, source in enumerate(cfg["sources"]):
    target = os.path.join(stage, str(i))
    if os.path.isdir(source):
        os.mkdir(target, 0o755)
    else:
        open(target, "w").close()
    check(libc.mount(source.encode(), target.encode(), None, 4096 | (1 << 14), None), "bind " + source)
uid = cfg["uid"]
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
os.execv(cfg["argv"][0], cfg["argv"])
'''


def launch_command(python: str, stage: str, sources: list[str], argv: list[str]) -> list[str]:
    """As root: the launcher's command line (bwrap's `binds` must then name `stage/<i>` as sources)."""
    cfg = {"stage": stage, "sources": sources, "uid": SANDBOX_UID, "argv": argv}
    return [python, "-I", "-S", "-c", LAUNCHER, json.dumps(cfg)]
