"""Format steps: HTML to text (trafilatura, as InternLM2), Unicode/whitespace normalisation, language ID."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ilm.data.base import Filter, Map
from ilm.data.document import Document

# C0/C1 controls except tab and newline, plus zero-width and bidi marks that only hide text
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANKS = re.compile(r"\n{3,}")


@dataclass
class HtmlToText(Map):
    """Extracts main text from documents whose metadata.format is 'html' (WARC responses); others pass."""

    type: ClassVar[str] = "html_to_text"
    favor_precision: bool = False
    include_tables: bool = True

    def apply(self, doc: Document) -> Document | tuple[None, str]:
        if doc.metadata.get("format") != "html":
            return doc
        import trafilatura

        try:
            text = trafilatura.extract(
                doc.text, include_comments=False, include_tables=self.include_tables,
                favor_precision=self.favor_precision, deduplicate=False,
            )
        except Exception:  # noqa: BLE001 - lxml raises many kinds on broken markup
            text = None
        if not text:
            return None, "html_no_text"
        doc.text = text
        doc.metadata["format"] = "text"
        return doc


def normalise_text(text: str, form: str = "NFC") -> str:
    """NFC, no control characters, spaces collapsed within lines, lines stripped, at most one blank line."""
    if not text.isascii():
        text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


@dataclass
class Normalize(Map):
    """Unicode NFC plus whitespace/control clean-up; documents left empty are dropped ('empty')."""

    type: ClassVar[str] = "normalize"
    form: str = "NFC"

    def apply(self, doc: Document) -> Document | tuple[None, str]:
        doc.text = normalise_text(doc.text, self.form)
        if not doc.text:
            return None, "empty"
        return doc


_IDENTIFIER: Any = None


def _identifier() -> Any:
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def detect_language(text: str, max_chars: int = 4000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid's bundled model, on the first max_chars characters."""
    lang, prob = _identifier().classify(text[:max_chars])
    return str(lang), float(prob)


@dataclass
class LanguageFilter(Filter):
    """Keeps documents in `languages` with probability >= min_score; writes metadata.language/_score."""

    type: ClassVar[str] = "language"
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    min_score: float = 0.65
    max_chars: int = 2000  # py3langid is the costliest rule step; 2,000 characters decide the language

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, score = detect_language(doc.text, self.max_chars)
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(score, 4)
        if self.languages and lang not in self.languages:
            return False, "language_other"
        if score < self.min_score:
            return False, "language_low_confidence"
        return True
