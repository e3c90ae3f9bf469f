"""Dependency sorting: files of a repository put back so that each comes after the files it imports.

Per language, imports are read from the source (Python with `ast`, the others with line patterns) and
resolved to files *of the same repository*; imports of anything else are ignored:
  Python        `import a.b`, `from a.b import c` (c may be a module), relative `from ..x import y`
  JS / TS       `import ... from './x'`, `export ... from`, `require('./x')`, `import('./x')`
  Java          `import a.b.C;`, `import a.b.*;`, `import static a.b.C.m;`, and same-package classes used
  C / C++       `#include "x.h"` (next to the file first, then anywhere by path suffix), `#include <x.h>`
  Go            `import "module/path/pkg"` against go.mod's module path (else by folder suffix)
The order is Kahn's topological sort with ties broken by path; when only cycles remain, the file with the
smallest remaining in-degree goes next (ties: path), so every repository gets a complete, deterministic
order. `DependencyOrder` is the pipeline step: it gathers each repository, orders it and writes the rank
and the resolved imports into metadata.
"""

from __future__ import annotations

import ast
import heapq
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from ilm.data.base import Context, Step
from ilm.data.document import Document

PY_EXT = (".py", ".pyi", ".pyx")
JS_EXT = (".ts", ".tsx", ".mts", ".cts", ".d.ts", ".js", ".jsx", ".mjs", ".cjs")
C_EXT = (".h", ".hpp", ".hh", ".hxx", ".c", ".cc", ".cpp", ".cxx", ".inc")
_PY_FROM = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+\(?\s*([\w\s,*]+)", re.MULTILINE)
_PY_IMPORT = re.compile(r"^\s*import\s+([\w., ]+)", re.MULTILINE)
_JS = re.compile(r"""(?:\bimport\s+(?:[\w*{}\s,$]+\s+from\s+)?|\bexport\s+[\w*{}\s,$]*\s+from\s+|\brequire\s*\(\s*|\bimport\s*\(\s*)['"]([^'"\n]+)['"]""")
_JAVA_IMPORT = re.compile(r"^\s*import\s+(static\s+)?([\w.]+?)(\.\*)?\s*;", re.MULTILINE)
_JAVA_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;", re.MULTILINE)
_C_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"\n]+)[>"]', re.MULTILINE)
_GO_IMPORT_BLOCK = re.compile(r"^\s*import\s*\((.*?)\)", re.MULTILINE | re.DOTALL)
_GO_IMPORT_ONE = re.compile(r'^\s*import\s+(?:[\w.]+\s+)?"([^"]+)"', re.MULTILINE)
_GO_PATH = re.compile(r'"([^"]+)"')
_GO_MODULE = re.compile(r"^\s*module\s+(\S+)", re.MULTILINE)
_WORD = re.compile(r"\b[A-Z]\w*\b")


def python_imports(code: str) -> list[tuple[int, str, list[str]]]:
    """(relative level, module, imported names) of every import statement, nested ones included."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        out = [(len(m.group(1)), m.group(2), [n.strip() for n in m.group(3).split(",") if n.strip()]) for m in _PY_FROM.finditer(code)]
        for m in _PY_IMPORT.finditer(code):
            out.extend((0, n.split(" as ")[0].strip(), []) for n in m.group(1).split(",") if n.strip())
        return out
    out: list[tuple[int, str, list[str]]] = []
    stack: list[ast.AST] = [tree]
    while stack:  # imports are statements: walk statement lists only, never into expressions
        node = stack.pop()
        if isinstance(node, ast.Import):
            out.extend((0, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level or 0, node.module or "", [a.name for a in node.names]))
        else:
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                sub = getattr(node, name, None)
                if isinstance(sub, list):
                    stack.extend(reversed(sub))
    return out


class RepoIndex:
    """Lookup tables from module names, package paths and file suffixes to the repository's files."""

    def __init__(self, repo: str, files: dict[str, str]):
        self.repo = repo
        self.files = files  # path -> text
        self.paths = set(files)
        self.py: dict[str, str] = {}
        self.java: dict[str, str] = {}
        self.java_pkg: dict[str, list[str]] = {}
        self.by_name: dict[str, list[str]] = {}
        self.go_dirs: dict[str, list[str]] = {}
        self.go_module = ""
        self.go_root = ""
        # A root holding __init__.py is itself the package (an installed package): its modules are only
        # importable as `repo.x`; a bare `x` would be another (standard-library) module.
        root_is_package = "__init__.py" in files
        for p in sorted(files):
            self.by_name.setdefault(posixpath.basename(p), []).append(p)
            if p.endswith(PY_EXT):
                parts = p.rsplit(".", 1)[0].split("/")
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                variants = [[repo, *parts]] if root_is_package else [parts, [repo, *parts]]
                if parts and parts[0] in ("src", "lib", "python"):
                    variants.append(parts[1:])
                for v in variants:
                    if v:
                        self.py.setdefault(".".join(v), p)
            elif p.endswith(".java"):
                m = _JAVA_PACKAGE.search(files[p])
                pkg = m.group(1) if m else ""
                cls = posixpath.basename(p)[:-5]
                self.java[f"{pkg}.{cls}" if pkg else cls] = p
                self.java_pkg.setdefault(pkg, []).append(p)
            elif p.endswith(".go"):
                self.go_dirs.setdefault(posixpath.dirname(p), []).append(p)
            elif posixpath.basename(p) == "go.mod" and not self.go_module:
                m = _GO_MODULE.search(files[p])
                self.go_module = m.group(1) if m else ""
                self.go_root = posixpath.dirname(p)

    def deps(self, path: str) -> set[str]:
        """Files of this repository that `path` imports (never itself)."""
        code = self.files[path]
        if path.endswith(PY_EXT):
            out = self._python(path, code)
        elif path.endswith(JS_EXT):
            out = self._js(path, code)
        elif path.endswith(".java"):
            out = self._java(path, code)
        elif path.endswith(C_EXT):
            out = self._c(path, code)
        elif path.endswith(".go"):
            out = self._go(path, code)
        else:
            out = set()
        out.discard(path)
        return out

    def _python(self, path: str, code: str) -> set[str]:
        """`from m import a, b`: a name that is a submodule of m links to that file; any other name (a
        function, class or constant, `*`) is defined in m itself and links to m's file (its __init__.py
        for a package). Both kinds may appear in one statement."""
        out: set[str] = set()
        pkg_dir = posixpath.dirname(path)
        for level, module, names in python_imports(code):
            if level:
                base = pkg_dir
                for _ in range(level - 1):
                    base = posixpath.dirname(base)
                stem = "/".join(x for x in [base, *module.split(".")] if x) if module else base
                subs = [self._py_file(f"{stem}/{n}" if stem else n) if n != "*" else None for n in names]
                out.update(f for f in subs if f)
                if not names or None in subs:  # some names are attributes of the module itself
                    f = self._py_file(stem) if stem else None
                    if f:
                        out.add(f)
                continue
            subs = [self.py.get(f"{module}.{n}") if n != "*" else None for n in names]
            out.update(f for f in subs if f)
            if names and None not in subs:
                continue
            mod = module
            while mod:
                if mod in self.py:
                    out.add(self.py[mod])
                    break
                mod = mod.rpartition(".")[0]
        return out

    def _py_file(self, stem: str) -> str | None:
        for cand in (f"{stem}.py", f"{stem}.pyi", f"{stem}/__init__.py", f"{stem}.pyx"):
            if cand in self.paths:
                return cand
        return None

    def _js(self, path: str, code: str) -> set[str]:
        out = set()
        here = posixpath.dirname(path)
        for spec in _JS.findall(code):
            if not spec.startswith((".", "/")):
                continue  # a package, not a file of this repository
            base = posixpath.normpath(posixpath.join(here, spec) if spec.startswith(".") else spec.lstrip("/"))
            for cand in [base, *(base + e for e in JS_EXT), *(f"{base}/index{e}" for e in JS_EXT)]:
                if cand in self.paths:
                    out.add(cand)
                    break
        return out

    def _java(self, path: str, code: str) -> set[str]:
        out = set()
        for static, name, star in _JAVA_IMPORT.findall(code):
            if star and not static:
                out.update(self.java_pkg.get(name, []))
                continue
            while name:
                if name in self.java:
                    out.add(self.java[name])
                    break
                name = name.rpartition(".")[0] if static or star else ""
        m = _JAVA_PACKAGE.search(code)
        same = self.java_pkg.get(m.group(1) if m else "", [])
        if len(same) > 1:  # classes of the same package need no import: use of the name is the dependency
            used = set(_WORD.findall(code))
            out.update(p for p in same if posixpath.basename(p)[:-5] in used)
        return out

    def _c(self, path: str, code: str) -> set[str]:
        out = set()
        here = posixpath.dirname(path)
        for quote, inc in _C_INCLUDE.findall(code):
            inc = inc.strip()
            if quote == '"':
                local = posixpath.normpath(posixpath.join(here, inc))
                if local in self.paths:
                    out.add(local)
                    continue
            cands = [p for p in self.by_name.get(posixpath.basename(inc), []) if p == inc or p.endswith("/" + inc)]
            if cands:
                out.add(min(cands, key=lambda p: (len(p), p)))
        return out

    def _go(self, path: str, code: str) -> set[str]:
        specs = _GO_IMPORT_ONE.findall(code)
        for block in _GO_IMPORT_BLOCK.findall(code):
            specs.extend(_GO_PATH.findall(block))
        out: set[str] = set()
        for spec in specs:
            d = None
            if self.go_module and (spec == self.go_module or spec.startswith(self.go_module + "/")):
                d = posixpath.join(self.go_root, spec[len(self.go_module) + 1 :]).rstrip("/")
            else:
                for cand in self.go_dirs:
                    if cand and (spec == cand or spec.endswith("/" + cand)):
                        d = cand
                        break
            if d is not None:
                out.update(self.go_dirs.get(d, []))
        return out


def strongly_connected(nodes: list[str], deps: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components (iterative); each component lists its members sorted by path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(deps.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(deps.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
    return comps


def _kahn(nodes: list[str], deps: dict[str, set[str]]) -> list[str]:
    """Kahn's order of `nodes` over the edges among them; when blocked (a cycle), the node with the
    smallest remaining in-degree goes next; every tie falls to the smaller path."""
    members = set(nodes)
    dependents: dict[str, list[str]] = {p: [] for p in nodes}
    indeg = dict.fromkeys(nodes, 0)
    for a in nodes:
        for b in deps.get(a, ()):
            if b in members and b != a:
                dependents[b].append(a)
                indeg[a] += 1
    ready = [p for p in nodes if indeg[p] == 0]
    heapq.heapify(ready)
    remaining = set(nodes)
    order: list[str] = []
    while remaining:
        if ready:
            n = heapq.heappop(ready)
            if n not in remaining:
                continue
        else:
            n = min(remaining, key=lambda p: (indeg[p], p))
        remaining.discard(n)
        order.append(n)
        for a in dependents[n]:
            if a in remaining:
                indeg[a] -= 1
                if indeg[a] == 0:
                    heapq.heappush(ready, a)
    return order


def dependency_order(paths: list[str], deps: dict[str, set[str]]) -> list[str]:
    """Every path once, dependencies first. Import cycles are collapsed into components first, so an
    edge outside a cycle is always respected; inside a component the file with the smallest in-degree
    breaks the cycle. Components and files are taken in path order when free to choose."""
    nodes = sorted(set(paths))
    node_set = set(nodes)
    deps = {a: {b for b in deps.get(a, ()) if b != a and b in node_set} for a in nodes}
    comps = strongly_connected(nodes, deps)
    comp_of = {p: i for i, c in enumerate(comps) for p in c}
    cdeps: dict[int, set[int]] = {i: set() for i in range(len(comps))}
    for a in nodes:
        for b in deps[a]:
            if comp_of[a] != comp_of[b]:
                cdeps[comp_of[a]].add(comp_of[b])
    names = [c[0] for c in comps]
    order_c = _kahn([f"{names[i]}\x00{i}" for i in range(len(comps))],
                    {f"{names[i]}\x00{i}": {f"{names[j]}\x00{j}" for j in cdeps[i]} for i in range(len(comps))})
    out: list[str] = []
    for key in order_c:
        comp = comps[int(key.rsplit("\x00", 1)[1])]
        out.extend(comp if len(comp) == 1 else _kahn(comp, deps))
    return out


def order_repository(repo: str, files: dict[str, str]) -> tuple[list[str], dict[str, set[str]]]:
    """(paths in dependency order, resolved intra-repository imports of each path)."""
    index = RepoIndex(repo, files)
    deps = {p: index.deps(p) for p in files}
    return dependency_order(list(files), deps), deps


@dataclass
class DependencyOrder(Step):
    """Reorders each repository's files into dependency order; annotates dep_rank and imports.

    The repository reader keeps a repository within one shard, so a shard is gathered in memory and
    repositories are emitted in first-seen order. Documents are only reordered: none is dropped.
    """

    type: ClassVar[str] = "code_dependency_order"
    max_imports_listed: int = 64

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        repos: dict[str, list[Document]] = {}
        for d in docs:
            repos.setdefault(str(d.metadata.get("repo", "")), []).append(d)
        for repo, group in repos.items():
            by_path = {str(d.metadata.get("path", d.id)): d for d in group}
            extra = [d for d in group if by_path.get(str(d.metadata.get("path", d.id))) is not d]  # duplicate paths
            order, deps = order_repository(repo, {p: d.text for p, d in by_path.items()})
            for rank, p in enumerate(order):
                d = by_path[p]
                d.metadata["dep_rank"] = rank
                d.metadata["imports"] = sorted(deps[p])[: self.max_imports_listed]
                yield d
            for d in extra:
                d.metadata["dep_rank"] = len(order)
                yield d
            ctx.count("code_repos_ordered")
