"""The page skeleton: CSS, a navigation bar, sections, tables and figures, as strings.

Every piece of text from a run goes through `esc`; a fragment that is already HTML is a `Safe` string, so
`table` and `section` can tell the two apart and nothing from a run is ever inserted unescaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any


class Safe(str):
    """HTML built here (already escaped); every other string is text to escape."""


def esc(value: Any) -> Safe:
    return value if isinstance(value, Safe) else Safe(html.escape(str(value), quote=True))


def join(parts: Iterable[Any]) -> Safe:
    return Safe("".join(esc(p) for p in parts))


def num(value: Any, digits: int = 3) -> str:
    """Numbers as a person reads them: ints with thousands separators, floats to `digits` significant places."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def tag(name: str, body: Any = "", **attrs: Any) -> Safe:
    """<name attrs>body</name>; attribute names: trailing underscore dropped (class_), '_' -> '-'."""
    a = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return Safe(f"<{name}{a}>{esc(body)}</{name}>")


def p(text: Any, **attrs: Any) -> Safe:
    return tag("p", text, **attrs)


def table(headers: list[str], rows: Iterable[Iterable[Any]], cls: str | None = None) -> Safe:
    """A table; numbers are formatted with `num` and right-aligned."""
    head = join(tag("th", h) for h in headers)
    body = []
    for row in rows:
        cells = [tag("td", num(c), class_="n") if isinstance(c, (int, float)) and not isinstance(c, bool)
                 else tag("td", c) for c in row]
        body.append(tag("tr", join(cells)))
    return tag("table", Safe(f"<thead><tr>{head}</tr></thead><tbody>{join(body)}</tbody>"), class_=cls)


def kv(pairs: Iterable[tuple[str, Any]]) -> Safe:
    """A two-column table of names and values."""
    rows = join(tag("tr", join([tag("th", k), tag("td", num(v))])) for k, v in pairs)
    return tag("table", rows, class_="kv")


def figure(img: Safe, caption: Any = None) -> Safe:
    return tag("figure", join([img, tag("figcaption", caption) if caption else ""]))


def pre(text: str, limit: int = 6000) -> Safe:
    cut = text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit:,} more characters)"
    return tag("pre", cut)


def details(summary: Any, body: Any, open_: bool = False) -> Safe:
    return tag("details", join([tag("summary", summary), body]), open="" if open_ else None)


def section(sid: str, title: str, body: Any, status: str = "ran") -> Safe:
    """One stage's section; `status` ("ran" / "not run") is shown beside the title and kept as data-status."""
    badge = tag("span", status, class_=f"badge {'ok' if status == 'ran' else 'off'}")
    return tag("section", join([tag("h2", join([title, " ", badge])), body]), id=sid, data_status=status)


def not_run(sid: str, title: str, why: str) -> Safe:
    return section(sid, title, p(f"Not run: {why}", class_="notrun"), status="not run")


CSS = """
:root { --fg:#1d2330; --muted:#5b6577; --line:#d9dee7; --bg:#ffffff; --soft:#f5f7fa; --accent:#2c6bd6; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
header { padding: 18px 28px 10px; border-bottom: 1px solid var(--line); background: var(--soft); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { color: var(--muted); font-size: 13px; overflow-wrap: anywhere; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
      padding: 6px 28px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
nav a.off { color: var(--muted); }
main { max-width: 1120px; overflow-wrap: anywhere; margin: 0 auto; padding: 8px 28px 60px; }
section { border-bottom: 1px solid var(--line); padding: 10px 0 22px; }
h2 { font-size: 19px; margin: 18px 0 8px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.badge { font-size: 11px; font-weight: 600; border-radius: 9px; padding: 1px 8px; vertical-align: middle; }
.badge.ok { background: #e2f4e5; color: #1d6b2c; }
.badge.off { background: #eceef2; color: var(--muted); }
.badge.time { background: #eaf1fd; color: #24509a; }
.notrun { color: var(--muted); font-style: italic; }
.note { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; max-width: 100%; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
code { overflow-wrap: anywhere; }
p.model { margin: 4px 0; font-size: 13.5px; }
table.niah td { text-align: center; min-width: 58px; font-weight: 600; font-variant-numeric: tabular-nums; }
table.niah th.past { background: #f3e6e6; }
thead th { background: var(--soft); }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: var(--soft); font-weight: 600; }
figure { margin: 10px 0 16px; }
figure svg, figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 2px; }
pre { background: var(--soft); border: 1px solid var(--line); padding: 8px 10px; font-size: 12px;
      overflow: auto; max-height: 420px; white-space: pre-wrap; word-break: break-word; }
details { margin: 6px 0; }
summary { cursor: pointer; color: var(--accent); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 8px 22px; }
.chat { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 10px 0 16px; }
.msg { margin: 6px 0; padding: 6px 10px; border-radius: 6px; background: var(--soft); }
.msg .role { font-size: 11px; font-weight: 700; text-transform: uppercase; color: var(--muted); }
.msg.user { background: #eaf1fd; }
.msg.assistant { background: #eef8ef; }
.msg.tool, .msg.environment { background: #fdf4e3; }
.msg pre { margin: 4px 0 0; max-height: 220px; }
"""


def page(title: str, subtitle: str, nav: list[tuple[str, str, bool]], sections: list[Safe]) -> str:
    """The whole document; `nav` holds (section id, label, ran)."""
    links = join(tag("a", label, href=f"#{sid}", class_=None if ran else "off") for sid, label, ran in nav)
    return ("<!DOCTYPE html>\n" + tag("html", join([
        tag("head", join([Safe('<meta charset="utf-8">'),
                          Safe('<meta name="viewport" content="width=device-width, initial-scale=1">'),
                          tag("title", title), tag("style", Safe(CSS))])),
        tag("body", join([tag("header", join([tag("h1", title), tag("div", subtitle, class_="sub")])),
                          tag("nav", links), tag("main", join(sections))])),
    ]), lang="en") + "\n")
