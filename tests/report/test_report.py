"""`ilm report RUN_DIR`: the page of a small run in headless Chromium, a partial run, and the command line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ilm.report import build_report, machine_info

SECTIONS = ("overview", "data", "code", "tokenizer", "pretrain", "sft", "rm", "rlhf", "eval", "chats", "recipes")
# Sections that must carry at least this many figures when their stage ran.
FIGURES = {"data": 1, "tokenizer": 1, "pretrain": 1, "sft": 1, "rm": 3, "rlhf": 1}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    for path in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and Path(path).exists():
            return path
    return None


class Sections(HTMLParser):
    """Section id -> (data-status, figures inside it); and whether any <script> or external reference exists."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list] = {}
        self.current: str | None = None
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a.get("id")
            self.sections[self.current] = [a.get("data-status"), 0]
        elif self.current and (tag == "img" or (tag == "svg" and "role" in a)):  # not matplotlib's own
            self.sections[self.current][1] += 1
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            v = a.get(k) or ""
            if k in a and not v.startswith(("#", "data:")):
                self.external.append(v)


def parse(path: Path) -> Sections:
    p = Sections()
    p.feed(path.read_text())
    return p


def test_small_run_report_in_headless_chromium(small_report, tmp_path):
    """Every section present and run, no console errors, no request leaves the page, every figure drawn with
    a non-zero size, hostile text shown as text; a screenshot is written."""
    out = small_report
    page_html = parse(out)
    missing = [s for s in SECTIONS if s not in page_html.sections]
    assert not missing, f"sections missing from the report: {missing}"
    assert {s: st for s, (st, _) in page_html.sections.items() if st != "ran"} == {}
    for sid, n in FIGURES.items():
        assert page_html.sections[sid][1] >= n, (sid, page_html.sections[sid])
    assert page_html.scripts == 0 and page_html.external == []

    exe = chromium()
    if exe is None:
        pytest.skip("Debian's chromium is not installed (`make install` installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    errors, requests, dialogs = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            def route(r):
                if not r.request.url.startswith(("file:", "data:")):
                    requests.append(r.request.url)
                    return r.abort()
                return r.continue_()

            page.route("**/*", route)
            page.goto(out.resolve().as_uri(), wait_until="load")
            found = page.eval_on_selector_all("section", "els => els.map(e => [e.id, e.dataset.status])")
            sizes = page.eval_on_selector_all("img, svg", """els => els.map(e => {
                const r = e.getBoundingClientRect();
                return [e.tagName, e.closest('section') ? e.closest('section').id : null, r.width, r.height,
                        e.tagName === 'IMG' ? e.naturalWidth : 1];
            })""")
            hostile_text = page.inner_text("#chats")
            width = page.evaluate("document.documentElement.scrollWidth")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == [] and requests == [] and dialogs == []
    assert width <= 1280, f"the page is {width} px wide: it must fit a 1,280 px window"
    assert [s for s, _ in found] == list(SECTIONS)
    assert len(sizes) >= sum(FIGURES.values())
    assert [s for s in sizes if not (s[2] > 0 and s[3] > 0 and s[4] > 0)] == []
    assert "<script>alert('x')</script>" in hostile_text  # shown as text, not run
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_run_sections_carry_the_runs_numbers(small_report):
    """The page shows what the files hold: funnel reasons, cl100k compression, the tool call and its result,
    fast-path patches, NIAH grids per setting, the resolved recipes, the machine."""
    text = small_report.read_text()
    for needle in ("exact_duplicate", "near_duplicate", "cl100k", "python_doc", "Join two or more pathname components.",
                   "fast-path pairs that patched the reward model", "NIAH hit rate: dynamic", "NIAH hit rate: plain", "pretrain/config.toml",
                   "sft/config.toml", "perplexity", "bits_per_byte", machine_info()["cpu"], "short", "held out",
                   "&lt;script&gt;alert(", "earlier pairs without the flagged pattern", "98.0% → 97.5%",
                   "patch check (held-out reviewer pairs)", "10.0% → 95.0%"):  # the gate, as the console prints it
        assert needle in text or needle.replace('"', "&quot;") in text, needle
    assert "<script>" not in text


def test_partial_run_shows_the_rest_as_not_run(data_only_run):
    """A run dir with only the data stage: every section is there, data ran, the others say "not run"."""
    out = build_report(data_only_run)
    assert out == data_only_run / "report.html"
    sections = parse(out).sections
    assert list(sections) == list(SECTIONS)
    status = {s: st for s, (st, _) in sections.items()}
    assert status.pop("data") == "ran" and status.pop("overview") == "ran"
    assert set(status.values()) == {"not run"}, status
    assert sections["data"][1] >= 1
    assert len(re.findall(r"Not run: ", out.read_text())) >= 8


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ilm.cli", "report", *args], capture_output=True, text=True,
                          check=False)


def test_cli_prints_the_path_and_refuses_a_non_run_dir(tmp_path):
    (tmp_path / "run" / "serve").mkdir(parents=True)
    (tmp_path / "run" / "serve" / "transcripts.json").write_text("[]")
    r = _cli(str(tmp_path / "run"), "--out", str(tmp_path / "x" / "page.html"))
    assert r.returncode == 0 and r.stdout.strip() == str(tmp_path / "x" / "page.html"), r.stderr
    assert (tmp_path / "x" / "page.html").read_text().startswith("<!DOCTYPE html>")
    for bad in (tmp_path, tmp_path / "missing"):
        r = _cli(str(bad))
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(bad) in r.stderr


def test_machine_info_has_what_the_report_shows():
    info = machine_info()
    assert {"platform", "cpu", "cores", "ram_gib", "torch", "device"} <= set(info)
    assert info["cores"] >= 1 and info["cpu"]


def test_demo_records_the_machine_and_prints_the_report_path_last(tmp_path, monkeypatch, capsys):
    """`ilm demo`'s report.json carries the machine, and its last line is the report's path (stages stubbed)."""
    import argparse
    import json
    from types import SimpleNamespace

    from ilm import demo
    from ilm.train import reward, sft
    from ilm.train.rlhf import synthetic

    def stub(*_):
        return {"texts": [], "samples": None, "export": "x", "actor": "x",
                "tokenizer": SimpleNamespace(vocab_size=1, stop_ids=[])}

    for name in ("stage_data", "stage_code", "stage_tokenizer", "stage_shards", "stage_pretrain", "stage_model",
                 "stage_eval", "stage_serve", "data_section", "code_section", "shards_section"):
        monkeypatch.setattr(demo, name, stub)
    for module in (sft, reward, synthetic):
        monkeypatch.setattr(module, "demo", stub)
    assert demo.run(argparse.Namespace(out=str(tmp_path / "run"), quick=True)) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"report: {tmp_path / 'run' / 'report.html'}" and (tmp_path / "run" / "report.html").is_file()
    machine = json.loads((tmp_path / "run" / "report.json").read_text())["machine"]
    assert machine == {**machine_info(), "device": machine["device"]}
