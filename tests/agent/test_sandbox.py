"""The code interpreter's confinement: each escape is stopped with a message, and the interpreter goes on."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from ilm.agent.sandbox import Limits, Sandbox

from .conftest import needs_confinement

pytestmark = needs_confinement  # the kernel features are checked without ilm's code: a bug still fails

LIMITS = Limits(cpu_seconds=2, memory_bytes=256 << 20, wall_seconds=1.0, max_processes=16, output_bytes=2000)


@pytest.fixture
def sandbox():
    with Sandbox(LIMITS) as sb:
        why = sb.start()
        assert why is None, why
        yield sb


def _survives(sb: Sandbox, fresh: bool = False) -> None:
    """The same interpreter answers the next call (state kept unless it had to be restarted)."""
    result = sb.run("print(x)")
    if fresh:
        assert "NameError" in result.text and "fresh interpreter" in result.text
        sb.run("x = 41")
    else:
        assert result.ok and result.text == "41", result.text


def test_state_persists_across_calls(sandbox):
    assert sandbox.run("x = 1").ok
    assert sandbox.run("print(x)").text == "1"
    assert sandbox.run("x += 1\nx * 10").text == "20"  # the last expression's value, like a notebook


def test_network_is_unreachable(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(1.0)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    waiter = threading.Thread(target=accept)
    waiter.start()
    sandbox.run("x = 41")
    local = sandbox.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)")
    dns = sandbox.run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=0.5)")
    udp = sandbox.run("s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('1.1.1.1', 53))")
    waiter.join()
    server.close()
    assert accepted == []  # the parent's server never saw the sandbox
    for result in (local, dns, udp):
        assert not result.ok
        assert "no network access" in result.text, result.text
    _survives(sandbox)


def test_writes_outside_the_work_directory_fail(sandbox, tmp_path):
    outside = tmp_path / "escaped.txt"
    sandbox.run("x = 41")
    result = sandbox.run(f"open({str(outside)!r}, 'w').write('x')")
    assert not outside.exists()
    assert not result.ok and "PermissionError" in result.text and "only the working directory" in result.text
    also = sandbox.run("import os\nos.mkdir('/tmp/ilm-sandbox-escape-dir')")
    assert not also.ok and not Path("/tmp/ilm-sandbox-escape-dir").exists()
    inside = sandbox.run("open('notes.txt', 'w').write('kept')\nopen('notes.txt').read()")
    assert inside.text == "'kept'" and (sandbox.workdir / "notes.txt").read_text() == "kept"
    _survives(sandbox)


def test_fork_bomb_is_bounded_by_the_process_limit(sandbox):
    sandbox.run("x = 41")
    result = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert not result.ok
    assert "process limit" in result.text or "wall-clock limit" in result.text, result.text
    counted = sandbox.run(
        "import os, time\nn = 0\ntry:\n    while n < 100:\n        if os.fork() == 0:\n            time.sleep(5)\n"
        "            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)")
    assert counted.ok and int(counted.text) < LIMITS.max_processes  # bounded; the cell's children are gone after
    _survives(sandbox, fresh="wall-clock limit" in result.text)


def test_memory_limit(sandbox):
    sandbox.run("x = 41")
    result = sandbox.run("big = bytearray(1024 * 2**20)")
    assert not result.ok and "MemoryError" in result.text and "memory limit is 256 MiB" in result.text
    _survives(sandbox)


def test_infinite_loop_hits_the_wall_clock_limit(sandbox):
    sandbox.run("x = 41")
    result = sandbox.run("while True:\n    pass")
    assert not result.ok and "wall-clock limit of 1 s" in result.text and "lost" in result.text
    _survives(sandbox, fresh=True)
    assert sandbox.run("print(x)").text == "41"


def test_output_is_capped():
    with Sandbox(LIMITS) as sb:
        result = sb.run("print('a' * 5000)")
        assert result.output == "a" * 2000 and "[output truncated: 3001 more bytes not shown]" in result.text


def test_refuses_when_unshare_fails(monkeypatch):
    """Where no namespace can be made (here: a worker whose unshare always fails), the interpreter does
    not start unless the caller allows the network."""
    import ilm.agent.sandbox as sandbox_module

    source = sandbox_module._WORKER.read_text().replace(
        "libc = ctypes.CDLL(None, use_errno=True)",
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "class _NoUnshare:\n"
        "    def __getattr__(self, name):\n"
        "        if name == 'unshare':\n"
        "            return lambda flags: (ctypes.set_errno(1), -1)[1]\n"
        "        return getattr(_real, name)\n"
        "_real = libc\nlibc = _NoUnshare()")
    monkeypatch.setattr(Sandbox, "worker_source", lambda self: source)
    with Sandbox(LIMITS) as sb:
        why = sb.start()
        assert why is not None and "no network namespace" in why and "allow_network=True" in why
        result = sb.run("print(1)")
        assert not result.ok and "allow_network=True" in result.text
    with Sandbox(LIMITS, allow_network=True) as sb:
        assert sb.start() is None
        assert sb.run("print(1)").text == "1"
        assert any("network is reachable" in n for n in sb.confinement)
