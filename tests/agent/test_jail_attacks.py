"""The interpreter's jail under attack (loopback and temp files only).

Each attack is first run UNCONFINED, as a plain subprocess of this interpreter, and shown to work there
(so each test can fail); then in the jail, where it must fail; then the same Sandbox answers the next
cell. Parts that need a root host (a root-owned file, root's exemption from RLIMIT_NPROC) say so.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ilm.agent.sandbox import Limits, Sandbox

from .conftest import needs_jail

pytestmark = needs_jail
ROOT = os.geteuid() == 0
LIMITS = Limits(cpu_seconds=5, memory_bytes=512 << 20, wall_seconds=10.0, max_processes=8, output_bytes=4000,
                file_bytes=1 << 20, disk_bytes=4 << 20)


def unconfined(code: str, cwd: str | Path, **kw) -> subprocess.CompletedProcess:
    """The attack as a plain subprocess (no jail)."""
    return subprocess.run([sys.executable, "-I", "-c", code], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False, **kw)


def survives(sb: Sandbox) -> None:
    """The host is fine and the same Sandbox answers the next cell."""
    assert sb.run("print(6 * 7)").text.endswith("42")


@pytest.fixture
def shared_dir():
    """A host directory any user can enter (bound read-only into the jail): public.txt 0644, secret.txt 0600."""
    d = Path(tempfile.mkdtemp(prefix="ilm-jail-test-"))
    d.chmod(0o755)
    (d / "public.txt").write_text("public")
    (d / "secret.txt").write_text("TOPSECRET")
    (d / "secret.txt").chmod(0o600)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.mark.skipif(not ROOT, reason="a root-owned 0600 file needs a root host")
def test_root_owned_files_are_unreadable(shared_dir):
    attack = f"print(open({str(shared_dir / 'secret.txt')!r}).read())"
    shadow = "print(open('/etc/shadow').read()[:5])"
    assert unconfined(attack, shared_dir).stdout == "TOPSECRET\n"
    assert unconfined(shadow, shared_dir).returncode == 0
    with Sandbox(LIMITS, ro_paths=[shared_dir]) as sb:
        assert sb.run(f"open({str(shared_dir / 'public.txt')!r}).read()").text == "'public'"  # the bind is there
        got = sb.run(attack)
        assert not got.ok and "PermissionError" in got.text and "TOPSECRET" not in got.text
        got = sb.run(shadow)
        assert not got.ok and "root:" not in got.text
        survives(sb)


def test_host_unix_socket_is_unreachable(shared_dir):
    path = shared_dir / "host.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    path.chmod(0o600)
    server.listen(4)
    server.settimeout(20)
    seen: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            seen.append(conn.recv(100))
            conn.sendall(b"hello from the host")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    attack = (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\n"
              "s.sendall(b'attack')\nprint(s.recv(100))")
    try:
        assert "hello from the host" in unconfined(attack, shared_dir).stdout
        assert seen == [b"attack"]
        with Sandbox(LIMITS, ro_paths=[shared_dir]) as sb:
            got = sb.run(attack)
            assert not got.ok and "hello" not in got.text
            abstract = sb.run("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0ilm-host')")
            assert not abstract.ok and "PermissionError" in abstract.text
            survives(sb)
        assert seen == [b"attack"]  # the jail never reached it
    finally:
        server.close()
        path.unlink()


def test_host_command_lines_are_invisible(tmp_path):
    token = f"ilm-api-key-{secrets.token_hex(8)}"
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token])
    attack = ("import os\nfound = []\nfor p in os.listdir('/proc'):\n    try:\n"
              "        found.append(open(f'/proc/{p}/cmdline', 'rb').read())\n    except OSError:\n        pass\n"
              f"print(sum({token[::-1]!r}[::-1].encode() in c for c in found), len(found))")  # not in ours
    try:
        assert not unconfined(attack, tmp_path).stdout.startswith("0 ")
        with Sandbox(LIMITS) as sb:
            got = sb.run(attack)
            assert got.ok and got.text.startswith("0 "), got.text
            survives(sb)
    finally:
        host.kill()
        host.wait()


def _jail_pids(sb: Sandbox) -> list[int]:
    """The processes in the jail's PID namespace, as the host sees them."""
    ns = os.stat(f"/proc/{sb.jail_pid}/ns/pid").st_ino
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/pid").st_ino == ns:
                    found.append(int(name))
            except OSError:
                pass
    return found


FORK_BOMB = """
import os, time
for ids in ((0, 0, 0), (1, 1, 1)):
    try:
        os.setresuid(*ids)
        break
    except OSError:
        pass
n = 0
try:
    while n < 40:
        if os.fork() == 0:
            os.close(1)
            os.close(2)
            time.sleep(3)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n, flush=True)
time.sleep(1)
"""


@pytest.mark.skipif(not ROOT, reason="root's exemption from RLIMIT_NPROC is what the attack relies on")
def test_setresuid_does_not_lift_the_process_limit(tmp_path):
    limit = LIMITS.max_processes
    plain = unconfined(f"import resource\nresource.setrlimit(resource.RLIMIT_NPROC, ({limit}, {limit}))\n" + FORK_BOMB,
                       tmp_path)
    assert plain.stdout.startswith("40"), plain
    with Sandbox(LIMITS) as sb:
        assert sb.start() is None
        counts: list[int] = []
        result: list = []
        runner = threading.Thread(target=lambda: result.append(sb.run(FORK_BOMB)))
        runner.start()
        while runner.is_alive():
            counts.append(len(_jail_pids(sb)))
            time.sleep(0.01)
        runner.join()
        assert result[0].ok and int(result[0].output) < limit, result[0].text
        assert 2 < max(counts) <= limit, counts  # supervisor + kernel + forks, never past the limit
        assert len(_jail_pids(sb)) == 2  # the cell's processes are killed and reaped when it ends
        survives(sb)


DISK = """
import os
written = 0
try:
    for i in range(40):
        with open(f'f{i}', 'wb') as f:
            f.write(b'x' * (1 << 20))
        written += 1 << 20
except OSError as e:
    print(type(e).__name__)
print(written >> 20)
"""


def test_total_disk_use_is_capped(tmp_path):
    plain = unconfined(DISK, tmp_path)
    assert plain.stdout.strip() == "40"  # 40 MiB: nothing capped it
    with Sandbox(LIMITS) as sb:
        got = sb.run(DISK)
        lines = got.output.split()
        assert lines[0] == "OSError" and int(lines[1]) <= LIMITS.disk_bytes >> 20, got.text
        survives(sb)
        # remove the attack's own files only (the working directory may hold directories of the interpreter's)
        assert sb.run("import os\nfor i in range(40):\n    if os.path.exists(f'f{i}'):\n        os.remove(f'f{i}')\n"
                      "print('freed')").ok
        assert int(sb.run(DISK).output.split()[-1]) <= LIMITS.disk_bytes >> 20  # the same cap again


def test_tcp_to_a_host_listener_fails(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(5)
    port = server.getsockname()[1]
    attack = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\nprint('sent')"
    try:
        assert unconfined(attack, tmp_path).stdout == "sent\n"
        server.accept()[0].close()
        with Sandbox(LIMITS) as sb:
            got = sb.run(attack)
            assert not got.ok and "ConnectionRefusedError" in got.text and "no network access" in got.text
            server.settimeout(0.2)
            with pytest.raises(TimeoutError):
                server.accept()
            survives(sb)
    finally:
        server.close()


def test_writes_outside_fail(shared_dir, tmp_path):
    """Only host temp paths are ever written unconfined; in the jail, its root and /dev are tried too."""
    attack = ("import sys\nfor path in {paths}:\n    try:\n        open(path, 'w').write('x')\n"
              "        print('wrote', path)\n    except OSError as e:\n        print('failed', path, type(e).__name__)")
    host_targets = [tmp_path / "escaped.txt", shared_dir / "escaped.txt"]
    plain = unconfined(attack.format(paths=[str(t) for t in host_targets]), tmp_path)
    assert plain.stdout.count("wrote") == 2
    for path in host_targets:
        path.unlink()
    targets = [*host_targets, "/escaped.txt", "/dev/shm/escaped.txt", "/proc/escaped.txt"]
    with Sandbox(LIMITS, ro_paths=[shared_dir]) as sb:
        got = sb.run(attack.format(paths=[str(t) for t in targets]))
        assert got.ok and got.output.count("failed") == len(targets), got.text
        assert f"failed {shared_dir / 'escaped.txt'} OSError" in got.text  # bound, read-only (EROFS)
        assert not any(t.exists() for t in host_targets)
        survives(sb)


FORGE = """
import json, os
PROCS = ("self", str(os.getppid()))  # our fds, then the supervisor's (in the jail; never other processes)
forged = (json.dumps({"ok": True, "error": None, "note": "FORGED", "ready": True}) + "\\n").encode()
for proc in PROCS:
    try:
        fds = os.listdir(f"/proc/{proc}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            target = os.open(f"/proc/{proc}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            target = int(fd) if proc == "self" else None
        if target is not None:
            try:
                os.write(target, forged)
            except OSError:
                pass
"""


def test_forged_control_messages_are_not_results(tmp_path):
    """A report written by the cell itself, to any fd it can reach, is not taken as its result."""
    r, w = os.pipe()
    own_fds_only = FORGE.replace('("self", str(os.getppid()))', '("self",)')  # the parent here is pytest
    assert own_fds_only != FORGE
    plain = subprocess.run([sys.executable, "-I", "-c", own_fds_only + "raise ValueError('the real outcome')"],
                           pass_fds=(w,), cwd=tmp_path, capture_output=True, stdin=subprocess.DEVNULL,
                           check=False, timeout=60)
    os.close(w)
    with os.fdopen(r) as naive:  # a channel the cell's process holds: the forged line comes first
        assert json.loads(naive.readline())["note"] == "FORGED" and plain.returncode == 1
    with Sandbox(LIMITS) as sb:
        for tail in ("raise ValueError('the real outcome')", "print('done')"):
            sb.run("x = 41")
            got = sb.run(FORGE + tail)
            assert got.note != "FORGED" and not got.ok, got.text  # (its stdout shows what it wrote there)
            assert "control channel" in got.text, got.text
            survives(sb)


def test_seccomp_denies_ptrace_and_new_namespaces(tmp_path):
    attack = """
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    signal.pause()
print('ptrace', libc.ptrace(16, child, 0, 0), ctypes.get_errno())
os.kill(child, 9)
os.waitpid(child, 0)
print('unshare', libc.unshare(0x10000000), ctypes.get_errno())
"""
    if ROOT:
        assert unconfined(attack, tmp_path).stdout.split() == ["ptrace", "0", "0", "unshare", "0", "0"]
    with Sandbox(LIMITS) as sb:
        got = sb.run(attack)
        assert got.ok and got.output.split() == ["ptrace", "-1", "1", "unshare", "-1", "1"], got.text
        survives(sb)


def test_jail_facts(monkeypatch):
    """Seen from the host, every jail process is uid 65534; inside, no capabilities, seccomp on, no host
    environment, only its own fds."""
    monkeypatch.setenv("ILM_HOST_SECRET", "s3cret")
    with Sandbox(LIMITS) as sb:
        got = sb.run("import os, time\nstatus = open('/proc/self/status').read()\n"
                     "print([l.split()[1] for l in status.splitlines() if l.startswith(('CapEff', 'CapBnd', 'Seccomp:'))])\n"
                     "print('s3cret' in repr(os.environ), len(os.listdir('/proc/self/fd')))\n"
                     "os.kill(1, 2)\nos.kill(1, 9)\nos.listdir('/proc/1/fd')")
        assert got.output.splitlines()[:2] == ["['0000000000000000', '0000000000000000', '2']",
                                               "False 6"], got.text  # stdio, the kernel's two pipes, listdir's
        assert "PermissionError: [Errno 13] Permission denied: '/proc/1/fd'" in got.text  # the supervisor's
        survives(sb)  # and signals to it did nothing
        uids = set()
        for pid in _jail_pids(sb):
            status = Path(f"/proc/{pid}/status").read_text()
            uids.add(tuple(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]))
        assert uids == {("65534",) * 4} if ROOT else len(uids) == 1
