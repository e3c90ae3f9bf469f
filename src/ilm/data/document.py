"""The one record every data step sees: a Document (id, text, source, timestamp, metadata)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

# Keys a jsonl/parquet record may use for the fields below; anything else goes into metadata.
TEXT_KEYS = ("text", "content", "raw_content")
ID_KEYS = ("id", "doc_id", "url")
TIME_KEYS = ("timestamp", "date", "crawl_date", "created_at")


@dataclass(slots=True)
class Document:
    """A document flowing through the pipeline; steps may replace `text` and add `metadata`."""

    id: str
    text: str
    source: str = ""
    timestamp: float | str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The jsonl/parquet form: the five fields, metadata kept as one nested object."""
        return {
            "id": self.id,
            "text": self.text,
            "source": self.source,
            "timestamp": self.timestamp,
            "metadata": self.metadata,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any], default_id: str, source: str = "") -> Document:
        """Build from a loose record; raises KeyError('text') when no text field exists."""
        text = None
        for key in TEXT_KEYS:
            if key in rec and rec[key] is not None:
                text = rec[key]
                break
        if text is None:
            raise KeyError("text")
        if not isinstance(text, str):
            text = str(text)
        doc_id = next((str(rec[k]) for k in ID_KEYS if rec.get(k) is not None), default_id)
        ts = next((rec[k] for k in TIME_KEYS if rec.get(k) is not None), None)
        meta = rec.get("metadata")
        meta = dict(meta) if isinstance(meta, dict) else {}
        skip = set(TEXT_KEYS) | {"id", "source", "metadata"} | set(TIME_KEYS)
        for k, v in rec.items():
            if k not in skip and k not in meta:
                meta[k] = v
        return cls(doc_id, text, str(rec.get("source") or source), ts, meta)

    def time_seconds(self) -> float:
        """Timestamp as POSIX seconds for "keep the most recent"; missing or unparsable is oldest (-inf)."""
        return to_seconds(self.timestamp)

    @property
    def url(self) -> str | None:
        u = self.metadata.get("url")
        return u if isinstance(u, str) else (self.id if self.id.startswith(("http://", "https://")) else None)


def to_seconds(ts: Any) -> float:
    """Numbers are POSIX seconds (values above 1e11 are taken as milliseconds); strings are ISO 8601."""
    if ts is None or isinstance(ts, bool):
        return float("-inf")
    if isinstance(ts, (int, float)):
        v = float(ts)
        return v / 1000.0 if v > 1e11 else v
    if isinstance(ts, _dt.datetime):
        return ts.timestamp() if ts.tzinfo else ts.replace(tzinfo=_dt.UTC).timestamp()
    if isinstance(ts, str):
        s = ts.strip().replace("Z", "+00:00")
        try:
            d = _dt.datetime.fromisoformat(s)
        except ValueError:
            try:
                return to_seconds(float(s))
            except ValueError:
                return float("-inf")
        return to_seconds(d)
    return float("-inf")
