"""Which language a file is: by name and extension first, then by content (shebang, C vs C++ headers).

The language decides the markdown fence tag, the comment syntax of path comments, which quality rules
apply and which import parser the dependency sort uses. Files that are not code but belong with it
(requirements.txt, pyproject.toml, package.json, go.mod, ...) are `config` files: samples carry them
next to the code they describe.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyx": "cython",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".java": "java", ".kt": "kotlin", ".scala": "scala",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".go": "go", ".rs": "rust", ".rb": "ruby", ".php": "php", ".cs": "csharp", ".swift": "swift",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".sql": "sql", ".r": "r", ".lua": "lua", ".pl": "perl",
    ".md": "markdown", ".rst": "rst", ".txt": "text",
    ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini",
    ".xml": "xml", ".html": "html", ".htm": "html", ".css": "css", ".scss": "css",
}
# Files known by their whole name (build and dependency manifests).
NAMES: dict[str, str] = {
    "makefile": "makefile", "dockerfile": "dockerfile", "cmakelists.txt": "cmake", "go.mod": "gomod",
    "requirements.txt": "text", "setup.cfg": "ini", "pyproject.toml": "toml", "package.json": "json",
    "cargo.toml": "toml", "pom.xml": "xml", "build.gradle": "groovy", "tsconfig.json": "json",
}
CONFIG_NAMES = frozenset({
    "requirements.txt", "requirements-dev.txt", "pyproject.toml", "setup.cfg", "setup.py", "package.json",
    "tsconfig.json", "go.mod", "cargo.toml", "pom.xml", "build.gradle", "cmakelists.txt", "makefile",
    "dockerfile", "gemfile", "composer.json", "environment.yml", "tox.ini", "meson.build",
})
# Markdown fence tags (GitHub linguist names).
FENCE_TAGS = {"cpp": "cpp", "csharp": "csharp", "shell": "bash", "gomod": "go", "text": "text", "makefile": "makefile"}
LINE_COMMENT = {
    "python": "#", "cython": "#", "shell": "#", "ruby": "#", "perl": "#", "r": "#", "yaml": "#", "toml": "#",
    "makefile": "#", "dockerfile": "#", "cmake": "#", "ini": "#", "text": "#",
    "sql": "--", "lua": "--",
}
BLOCK_COMMENT = {"html": ("<!--", "-->"), "xml": ("<!--", "-->"), "markdown": ("<!--", "-->"), "css": ("/*", "*/"),
                 "json": ("//", ""), "rst": ("..", "")}
PROSE = frozenset({"markdown", "rst", "text"})
DATA = frozenset({"json", "yaml", "xml", "toml", "ini"})
_SHEBANG = [(re.compile(r"python"), "python"), (re.compile(r"\bnode\b|deno|bun"), "javascript"),
            (re.compile(r"\b(ba|z|k|da)?sh\b"), "shell"), (re.compile(r"ruby"), "ruby"), (re.compile(r"perl"), "perl")]
_CPP_HINTS = re.compile(r"^\s*(namespace\s|template\s*<|class\s+\w+\s*[:{]|#include\s*<(iostream|string|vector|memory)>)|std::", re.MULTILINE)


def detect_language(path: str, head: str = "") -> str:
    """Language of a file from its path and the first few KB of its text ('' when unknown)."""
    p = PurePosixPath(path)
    name = p.name.lower()
    if name in NAMES:
        return NAMES[name]
    if name.startswith("requirements") and name.endswith(".txt"):
        return "text"
    ext = p.suffix.lower()
    lang = EXTENSIONS.get(ext, "")
    if lang == "c" and ext == ".h" and _CPP_HINTS.search(head[:8000]):
        return "cpp"
    if not lang and head.startswith("#!"):
        first = head.split("\n", 1)[0]
        for pat, name_ in _SHEBANG:
            if pat.search(first):
                return name_
    return lang


def is_config(path: str) -> bool:
    """Dependency and build manifests that samples interleave with the code."""
    name = PurePosixPath(path).name.lower()
    return name in CONFIG_NAMES or (name.startswith("requirements") and name.endswith(".txt"))


def fence_tag(language: str) -> str:
    return FENCE_TAGS.get(language, language or "text")


def path_comment(path: str, language: str) -> str:
    """One line naming the file in the language's own comment syntax (for path-comment samples)."""
    if language in LINE_COMMENT:
        return f"{LINE_COMMENT[language]} file: {path}"
    if language in BLOCK_COMMENT:
        a, b = BLOCK_COMMENT[language]
        return f"{a} file: {path} {b}".rstrip()
    return f"// file: {path}"


def looks_binary(data: bytes) -> bool:
    """NUL bytes or many control characters in the first 8 KB: an image, object file or archive."""
    head = data[:8192]
    if b"\x00" in head:
        return True
    if not head:
        return False
    ctrl = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return ctrl / len(head) > 0.1
