"""Safety steps: URL/domain blocklist and a one-pass sensitive-word matcher (English and Chinese).

The toxicity classifier lives in classifier.py (ToxicityFilter). Lists are plain text files, one entry a
line, '#' comments; the small defaults in ilm/data/resources only make the default recipe runnable -
point `path` at a real list (for example the UT1 blocklists) in production.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ilm.data.base import Filter
from ilm.data.document import Document


def read_list(path: str) -> list[str]:
    """Entries of a list file; 'default:NAME' reads ilm/data/resources/NAME."""
    if path.startswith("default:"):
        text = resources.files("ilm.data").joinpath("resources", path.split(":", 1)[1]).read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def domain_of(url: str) -> str:
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".").removeprefix("www.")


@dataclass
class UrlBlocklist(Filter):
    """Drops documents whose URL's domain, or any parent domain, is listed; `domains` adds inline entries."""

    type: ClassVar[str] = "url_blocklist"
    path: str = "default:blocked_domains.txt"
    domains: list[str] = field(default_factory=list)
    url_substrings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._blocked: set[str] | None = None

    def blocked(self) -> set[str]:
        if self._blocked is None:
            items = (read_list(self.path) if self.path else []) + list(self.domains)
            self._blocked = {domain_of(d) or d.lower() for d in items}
        return self._blocked

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        url = doc.url
        if not url:
            return True
        host = domain_of(url)
        parts = host.split(".")
        blocked = self.blocked()
        for i in range(len(parts) - 1):
            if ".".join(parts[i:]) in blocked:
                return False, "blocked_domain"
        low = url.lower()
        if any(s in low for s in self.url_substrings):
            return False, "blocked_url"
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_blocked": None}


def _is_word_char(c: str) -> bool:
    return c.isalnum() and c.isascii()


@dataclass
class SensitiveWords(Filter):
    """Aho-Corasick over the lowercased text: one pass whatever the list size. ASCII entries must match
    whole words; CJK entries match anywhere. Drops when hits exceed `max_hits`."""

    type: ClassVar[str] = "sensitive_words"
    path: str = "default:sensitive_words.txt"
    words: list[str] = field(default_factory=list)
    max_hits: int = 2

    def __post_init__(self) -> None:
        self._automaton: Any = None

    def automaton(self) -> Any:
        if self._automaton is None:
            import ahocorasick

            a = ahocorasick.Automaton()
            for w in (read_list(self.path) if self.path else []) + list(self.words):
                w = w.lower()
                a.add_word(w, (len(w), w.isascii()))
            a.make_automaton()
            self._automaton = a
        return self._automaton

    def hits(self, text: str) -> list[str]:
        low = text.lower()
        a = self.automaton()
        if len(a) == 0:
            return []
        out = []
        for end, (n, ascii_word) in a.iter(low):
            start = end - n + 1
            if ascii_word and ((start > 0 and _is_word_char(low[start - 1])) or (end + 1 < len(low) and _is_word_char(low[end + 1]))):
                continue
            out.append(low[start : end + 1])
        return out

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        found = self.hits(doc.text)
        if found:
            doc.metadata["sensitive_hits"] = len(found)
        if len(found) > self.max_hits:
            return False, "sensitive_words"
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_automaton": None}
