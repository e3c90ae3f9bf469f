"""The report's evaluation section: NIAH grids from the hit flags (not the needle's value) with the summary
within / past the trained window, the results table's metric values, paths kept short, models named, and
`ilm report` on one stage's run folder."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from html.parser import HTMLParser

from tests.report.conftest import LONG_PATH, NIAH_DEPTHS, NIAH_LENGTHS, niah_hits

# matplotlib's RdYlGn at 0, 0.5 and 1 (what eval/niah.png draws): red, pale yellow, green
RED, YELLOW, GREEN = "#a50026", "#feffbe", "#006837"


class Tables(HTMLParser):
    """Every table inside #eval: its class, and rows of (text, attributes) cells."""

    def __init__(self):
        super().__init__()
        self.depth_in_eval = 0
        self.tables: list[tuple[str, list[list[tuple[str, dict]]]]] = []
        self.cell: list | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.depth_in_eval = 1 if a.get("id") == "eval" else 0
        if not self.depth_in_eval:
            return
        if tag == "table":
            self.tables.append((a.get("class") or "", []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th") and self.tables and self.tables[-1][1]:
            self.cell = ["", a]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][1][-1].append((self.cell[0], self.cell[1]))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[0] += data


def _eval_tables(report) -> list[tuple[str, list[list[tuple[str, dict]]]]]:
    t = Tables()
    t.feed(report.read_text())
    return t.tables


def test_niah_grids_show_the_hit_rate_of_each_cell_in_its_colour(small_report):
    grids = [rows for cls, rows in _eval_tables(small_report) if cls == "niah"]
    assert len(grids) == 2  # dynamic and plain
    for name, rows in zip(("dynamic", "plain"), grids):
        header, body = rows[0], rows[1:]
        assert [h[0] for h in header[1:]] == ["64", "128", "256 (past the window)"]
        assert len(body) == len(NIAH_DEPTHS)
        for d, row in zip(NIAH_DEPTHS, body):
            for n, (text, attrs) in zip(NIAH_LENGTHS, row[1:]):
                hits = niah_hits(name, n, d)
                rate = sum(hits) / len(hits)
                assert float(attrs["data-value"]) == rate, (name, n, d)
                assert text == f"{rate:.0%}"
                colour = {0.0: RED, 0.5: YELLOW, 1.0: GREEN}[rate]
                assert f"background:{colour}" in attrs["style"], (name, n, d, attrs["style"])
    text = small_report.read_text()
    assert "50494" not in text  # the needle's value is never shown as a score


def test_niah_summary_within_and_past_the_trained_window(small_report):
    summary = next(rows for cls, rows in _eval_tables(small_report)
                   if rows and [c[0] for c in rows[0]][:2] == ["setting", "overall"])
    got = {r[0][0]: [c[0] for c in r[1:]] for r in summary[1:]}
    # dynamic: the 6 cells within all hit, past: one cell at 50% of 3 (13 of 18 trials); plain: 1 cell of 9, of 6 within
    assert got == {"dynamic": ["72%", "100%", "17%"], "plain": ["11%", "17%", "0%"]}
    assert "Trained window (the model's max_position_embeddings): 128 tokens." in html.unescape(small_report.read_text())


def test_results_table_shows_each_metric_value(small_report):
    results = next(rows for cls, rows in _eval_tables(small_report)
                   if rows and rows[0][0][0] == "task" and rows[0][1][0] == "metric")
    header = [c[0] for c in results[0]]
    got = {(r[0][0], r[1][0]): dict(zip(header, (c[0] for c in r))) for r in results[1:]}
    assert got[("ilm_license_ppl", "word_perplexity")]["value"] == "1,087,091.7"
    assert got[("ilm_license_ppl", "bits_per_byte")]["value"] == "1.551"
    assert got[("ilm_license_ppl", "bits_per_byte")]["what it measures"] == "bits per byte (lower is better)"
    assert got[("ilm_license_ppl", "token_perplexity")]["value"] == "61.25"
    assert got[("ilm_stdlib_mc", "acc")]["value"] == "35.0%"
    assert got[("ilm_stdlib_mc", "acc")]["chance"] == "25.0%"  # 4 choices per question
    assert got[("ilm_stdlib_mc", "acc_norm")]["value"] == "25.0%"
    assert got[("ilm_stdlib_mc", "acc")]["documents"] == "4"
    assert {k[1] for k in got} == {"word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity", "acc",
                                   "acc_norm"}  # no bookkeeping (seconds, samples_n) as a metric


def test_lm_eval_results_shape_is_read_too(tmp_path):
    from ilm.report.evaluation import metric_rows

    rows = metric_rows({"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.05}},
                        "n-samples": {"arc_easy": {"original": 10, "effective": 8}}, "n-shot": {"arc_easy": 0}})
    assert rows == [{"task": "arc_easy", "metric": "acc", "value": 0.5, "stderr": 0.05, "n": 8, "shots": 0,
                     "chance": None}]


def test_no_absolute_path_and_every_model_named(small_report):
    text = html.unescape(re.sub(r"<[^>]+>", "", small_report.read_text()))
    assert LONG_PATH not in text and "a-rather-long-folder-name/a-rather-long-folder-name/a-rather" not in text
    for label in ("Model trained:", "Model fine-tuned:", "Backbone:", "Model evaluated:", "Policy (actor",
                  "Reward model:", "Task:", "Model behind the server:"):
        assert label in text, label
    assert "2 PPO queries such as \u201cRepeat the number 37.\u201d" in text
    assert "a separate task model, not this run's SFT model" in text  # the policy is not RUN/sft/final
    assert "RUN/rlhf-rounds/actor (the final RLHF policy" in text


def test_report_on_one_stage_folder(small_run, tmp_path):
    out = tmp_path / "pt.html"
    r = subprocess.run([sys.executable, "-m", "ilm.cli", "report", str(small_run / "pretrain"), "--out", str(out)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert '<section id="pretrain" data-status="ran"' in page and '<section id="sft" data-status="not run"' in page
    assert "Model trained:" in page and "preset tiny" in page


def test_the_replys_own_tool_call_is_shown(small_report):
    """The server's streamed tool_calls (the demo's exchange 2) are shown as the reply's call."""
    text = html.unescape(re.sub(r"<[^>]+>", "", small_report.read_text()))
    assert 'Exchange 3: tool call (with a tool call)' in text
    assert 'assistant · replytool call: get_weather({"city": "Paris"})' in text
