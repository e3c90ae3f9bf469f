"""The code interpreter as a notebook: state, limits, messages for the model, and refusing to run unjailed.

The attacks on the jail itself are in test_jail_attacks.py."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from ilm.agent.sandbox import Limits, Sandbox

from .conftest import JAIL_MISSING, needs_jail

LIMITS = Limits(cpu_seconds=2, memory_bytes=256 << 20, wall_seconds=1.0, max_processes=16, output_bytes=2000)


@pytest.fixture
def sandbox():
    if JAIL_MISSING:
        pytest.skip(JAIL_MISSING)
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


@needs_jail
def test_allow_network_shares_the_hosts_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    port = server.getsockname()[1]
    try:
        with Sandbox(LIMITS, allow_network=True) as sb:
            result = sb.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')")
            assert result.ok, result.text
            assert server.accept()[0].recv(2) == b"hi"
            assert any("network allowed" in n for n in sb.confinement)
    finally:
        server.close()


def test_the_work_directory_is_writable_and_the_rest_is_not(sandbox, tmp_path):
    sandbox.run("x = 41")
    result = sandbox.run(f"open({str(tmp_path / 'escaped.txt')!r}, 'w').write('x')")
    assert not result.ok and not (tmp_path / "escaped.txt").exists()
    result = sandbox.run("open('/usr/escaped.txt', 'w')")
    assert not result.ok and "only the working directory /tmp is writable" in result.text, result.text
    inside = sandbox.run("open('notes.txt', 'w').write('kept')\nimport os\nos.getcwd(), open('notes.txt').read()")
    assert inside.text == "('/tmp', 'kept')"
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


@needs_jail
def test_output_is_capped():
    with Sandbox(LIMITS) as sb:
        result = sb.run("print('a' * 5000)")
        assert result.output == "a" * 2000 and "[output truncated: 3001 more bytes not shown]" in result.text
        flood = sb.run("import sys\nfor _ in range(200):\n    sys.stdout.write('b' * 65536)")
        assert flood.ok and flood.truncated_bytes == 200 * 65536 - 2000  # counted, not kept


def test_refuses_to_run_unjailed_unless_told(monkeypatch, tmp_path):
    """No bubblewrap, no libseccomp, or a bwrap that cannot make its namespaces: one line saying why, and
    no code runs; `unconfined=True` runs it anyway and says so."""
    from ilm.agent import jail

    fake = tempfile.mkdtemp()  # a bwrap that fails as it does without user namespaces (any user may run it)
    os.chmod(fake, 0o755)
    script = Path(fake) / "bwrap"
    script.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    script.chmod(0o755)
    cases = [("find_bwrap", lambda: None, "bubblewrap (bwrap) is not installed"),
             ("seccomp_filter", lambda: "libseccomp is not installed", "libseccomp is not installed"),
             ("find_bwrap", lambda: str(script), "bwrap: No permissions to creating new namespace")]
    try:
        for name, replacement, said in cases:
            with monkeypatch.context() as m:
                m.setattr(jail, name, replacement)
                with Sandbox(LIMITS) as sb:
                    why = sb.start()
                    assert why is not None and "\n" not in why and said in why and "unconfined=True" in why, why
                    result = sb.run("print(1)")
                    assert not result.ok and said in result.text and "1" not in result.output
                with Sandbox(LIMITS, unconfined=True) as sb:
                    assert sb.start() is None
                    assert sb.run("print(1)").text == "1"
                    assert any("NOT jailed" in n for n in sb.confinement)
    finally:
        script.unlink()
        os.rmdir(fake)
