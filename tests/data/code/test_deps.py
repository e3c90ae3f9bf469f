"""Dependency order: every intra-repository import a -> b outside a cycle puts b before a (real packages)."""

from __future__ import annotations

from pathlib import Path

from ilm.data.code.deps import RepoIndex, dependency_order, order_repository

from .conftest import installed, make_repo, python_files


def sccs(nodes: list[str], deps: dict[str, set[str]]) -> dict[str, int]:
    """Kosaraju: node -> component id (written here, independent of the code under test)."""
    seen: set[str] = set()
    finish: list[str] = []
    for s in nodes:
        if s in seen:
            continue
        stack = [(s, iter(sorted(deps.get(s, ()))))]
        seen.add(s)
        while stack:
            v, it = stack[-1]
            nxt = next((w for w in it if w not in seen), None)
            if nxt is None:
                stack.pop()
                finish.append(v)
            else:
                seen.add(nxt)
                stack.append((nxt, iter(sorted(deps.get(nxt, ())))))
    rev: dict[str, set[str]] = {n: set() for n in nodes}
    for a in nodes:
        for b in deps.get(a, ()):
            rev[b].add(a)
    comp: dict[str, int] = {}
    for s in reversed(finish):
        if s in comp:
            continue
        comp[s] = len(comp)
        cid = comp[s]
        todo = [s]
        while todo:
            v = todo.pop()
            for w in rev[v]:
                if w not in comp:
                    comp[w] = cid
                    todo.append(w)
    return comp


def check_order(files: dict[str, str], name: str) -> tuple[int, int, int]:
    order, deps = order_repository(name, files)
    assert sorted(order) == sorted(files), "order must list every file exactly once"
    pos = {p: i for i, p in enumerate(order)}
    comp = sccs(sorted(files), deps)
    edges = cyclic = 0
    for a, bs in deps.items():
        for b in bs:
            edges += 1
            if comp[a] == comp[b]:
                cyclic += 1
                continue
            assert pos[b] < pos[a], f"{a} imports {b} but comes first"
    return len(files), edges, cyclic


def test_dependency_order_on_real_packages() -> None:
    for name in ("_pytest", "pip"):
        root = installed(name)
        files = python_files(root)
        n, edges, cyclic = check_order(files, name)
        print(f"{name}: {n} files, {edges} intra-repository imports, {cyclic} inside cycles; order complete and respected")
        assert edges > n  # imports really resolve to files of the package
        assert cyclic > 0  # these packages have import cycles: the cycle breaker is exercised
    # a concrete resolution: _pytest/main.py imports _pytest.config (a package) and _pytest.nodes
    root = installed("_pytest")
    idx = RepoIndex("_pytest", python_files(root))
    assert {"config/__init__.py", "nodes.py"} <= idx.deps("main.py")


def test_cycles_give_complete_deterministic_order() -> None:
    # a <-> b is a cycle; c imports a (outside the cycle); d is free: c must still follow a and b.
    deps = {"a.py": {"b.py"}, "b.py": {"a.py"}, "c.py": {"a.py"}, "d.py": set()}
    order = dependency_order(list(deps), deps)
    assert order == ["a.py", "b.py", "c.py", "d.py"]
    assert dependency_order(list(reversed(list(deps))), deps) == order  # input order does not matter
    # inside a cycle the file with the smallest in-degree goes first (q and r import one file, p two;
    # q < r by path), then Kahn continues: q frees r, r frees p
    deps = {"p": {"q", "r"}, "q": {"p"}, "r": {"q"}, "w": set(), "z": {"p"}}
    assert dependency_order(list(deps), deps) == ["q", "r", "p", "w", "z"]


def test_languages(tmp_path: Path) -> None:
    files = {
        # JavaScript / TypeScript: relative imports, require, re-exports, index files, packages ignored
        "web/src/main.ts": "import { util } from './lib/util';\nimport React from 'react';\nexport * from './types';\n",
        "web/src/lib/util.ts": "const fmt = require('./fmt');\nexport const util = 1;\n",
        "web/src/lib/fmt.js": "module.exports = {};\n",
        "web/src/types/index.ts": "export type T = number;\n",
        # Java: explicit, wildcard, static imports and same-package use
        "java/com/acme/App.java": "package com.acme;\nimport com.acme.util.*;\nimport static com.acme.core.Engine.run;\npublic class App { Helper h; }\n",
        "java/com/acme/Helper.java": "package com.acme;\npublic class Helper {}\n",
        "java/com/acme/util/Strings.java": "package com.acme.util;\nimport com.acme.core.Engine;\npublic class Strings {}\n",
        "java/com/acme/core/Engine.java": "package com.acme.core;\npublic class Engine { public static void run() {} }\n",
        # C / C++: quoted includes next to the file, then by path suffix; system headers ignored
        "c/src/main.c": '#include <stdio.h>\n#include "parser.h"\n#include "util/str.h"\nint main(void){return 0;}\n',
        "c/src/parser.h": '#include "util/str.h"\nint parse(void);\n',
        "c/include/util/str.h": "int str_len(const char*);\n",
        # Go: module path from go.mod, a package is its folder
        "go/go.mod": "module example.com/tool\n\ngo 1.21\n",
        "go/cmd/main.go": 'package main\n\nimport (\n\t"fmt"\n\t"example.com/tool/internal/db"\n)\n',
        "go/internal/db/db.go": 'package db\n\nimport "example.com/tool/internal/log"\n',
        "go/internal/log/log.go": "package log\n",
    }
    order, deps = order_repository("multi", files)
    pos = {p: i for i, p in enumerate(order)}
    expected = [
        ("web/src/main.ts", "web/src/lib/util.ts"), ("web/src/main.ts", "web/src/types/index.ts"),
        ("web/src/lib/util.ts", "web/src/lib/fmt.js"),
        ("java/com/acme/App.java", "java/com/acme/util/Strings.java"), ("java/com/acme/App.java", "java/com/acme/core/Engine.java"),
        ("java/com/acme/App.java", "java/com/acme/Helper.java"), ("java/com/acme/util/Strings.java", "java/com/acme/core/Engine.java"),
        ("c/src/main.c", "c/src/parser.h"), ("c/src/main.c", "c/include/util/str.h"), ("c/src/parser.h", "c/include/util/str.h"),
        ("go/cmd/main.go", "go/internal/db/db.go"), ("go/internal/db/db.go", "go/internal/log/log.go"),
    ]
    for a, b in expected:
        assert b in deps[a], f"{a} should depend on {b}; got {sorted(deps[a])}"
        assert pos[b] < pos[a]
    assert "java/com/acme/App.java" not in deps["java/com/acme/Helper.java"]
    n_edges = sum(len(v) for v in deps.values())
    assert n_edges == len(expected), sorted((a, b) for a, v in deps.items() for b in v)
    # relative Python imports, including `from . import x` and `from ..pkg import y`
    pyfiles = {"pkg/__init__.py": "", "pkg/a.py": "from . import b\nfrom ..other import c\n", "pkg/b.py": "x = 1\n",
               "other/__init__.py": "", "other/c.py": "from pkg.b import x\n"}
    _, d = order_repository("proj", pyfiles)
    assert d["pkg/a.py"] == {"pkg/b.py", "other/c.py"} and d["other/c.py"] == {"pkg/b.py"}
    make_repo(tmp_path, {})


def test_real_c_headers() -> None:
    root = installed("lxml") / "includes"
    if not root.is_dir():
        return
    files = {p.relative_to(root).as_posix(): p.read_text(errors="replace") for p in sorted(root.rglob("*.h"))}
    n, edges, cyclic = check_order(files, "lxml-includes")
    print(f"lxml C headers: {n} files, {edges} includes resolved, {cyclic} in cycles")
    assert edges > n


def test_python_import_forms_exact_edges(tmp_path: Path) -> None:
    """Each import form on a small package: a submodule name links to its file, any other name to the
    module that defines it (pkg/__init__.py for a package), both in one statement; nested imports count."""
    files = {
        "pkg/__init__.py": "from .core import Engine\nVERSION = '1'\n\ndef helper():\n    return 1\n",
        "pkg/core.py": "import os\nfrom . import util\n\nclass Engine:\n    pass\n",
        "pkg/util.py": "X = 1\n",
        "pkg/sub/__init__.py": "from .leaf import leaf_fn\nSUBNAME = 2\n",
        "pkg/sub/leaf.py": "from ..util import X\n\ndef leaf_fn():\n    return X\n",
        "pkg/mixed.py": "from pkg import util, VERSION\n",
        "pkg/rel_mixed.py": "from . import core, helper\n",
        "pkg/from_sub.py": "from .sub import SUBNAME\n",
        "pkg/from_sub_mixed.py": "from .sub import (\n    leaf,\n    SUBNAME,\n)\n",
        "pkg/nested.py": ("def f():\n    from pkg.sub import leaf\n    import pkg.util\n    try:\n"
                          "        from .core import Engine\n    except ImportError:\n        pass\n"
                          "    class C:\n        def g(self):\n            from .sub.leaf import leaf_fn\n"),
        "app.py": "import pkg\nimport pkg.sub.leaf as L\nfrom pkg import *\nfrom pkg.sub import leaf_fn, SUBNAME\nimport json\n",
    }
    for p, text in files.items():  # the package is real: every file imports (nested ones when called)
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text(text)
    import subprocess
    import sys

    code = "import importlib, pkg.nested as n; n.f(); [importlib.import_module(m) for m in " \
           "('app', 'pkg.mixed', 'pkg.rel_mixed', 'pkg.from_sub', 'pkg.from_sub_mixed')]"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    index = RepoIndex("proj", files)
    expected = {
        "pkg/__init__.py": {"pkg/core.py"},
        "pkg/core.py": {"pkg/util.py"},
        "pkg/util.py": set(),
        "pkg/sub/__init__.py": {"pkg/sub/leaf.py"},
        "pkg/sub/leaf.py": {"pkg/util.py"},
        "pkg/mixed.py": {"pkg/util.py", "pkg/__init__.py"},
        "pkg/rel_mixed.py": {"pkg/core.py", "pkg/__init__.py"},
        "pkg/from_sub.py": {"pkg/sub/__init__.py"},
        "pkg/from_sub_mixed.py": {"pkg/sub/leaf.py", "pkg/sub/__init__.py"},
        "pkg/nested.py": {"pkg/sub/leaf.py", "pkg/util.py", "pkg/core.py"},
        "app.py": {"pkg/__init__.py", "pkg/sub/leaf.py", "pkg/sub/__init__.py"},
    }
    assert {p: index.deps(p) for p in files} == expected
    order, _ = order_repository("proj", files)
    pos = {p: i for i, p in enumerate(order)}
    assert all(pos[b] < pos[a] for a, bs in expected.items() for b in bs)
