"""Long-context samples (ilm.data.longctx): each <= window, files in dependency order, a unit split only when
it alone exceeds the window (and counted), the length report, the conversations built on the samples."""

import json
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ilm.data import longctx
from ilm.data.code.deps import order_repository
from ilm.data.longctx import Unit, pack_samples

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def words(text: str) -> int:
    return len(text.split())


def _check_policy(units, samples, counts, window, count):
    """The stated policy, checked from the outside."""
    assert all(s.tokens == count(s.text) <= window for s in samples)
    position = {(u.source, u.name): i for i, u in enumerate(units)}
    rebuilt: dict[tuple[str, str], list[str]] = {}
    last = -1
    for s in samples:
        assert len({m.split(" (part ")[0] for m, _ in s.members}) == len(s.members) or s.split
        for name, text in s.members:
            base = name.split(" (part ")[0]
            i = position[(s.source, base)]  # one source per sample
            assert i >= last  # input (dependency) order, across and inside samples
            last = i
            rebuilt.setdefault((s.source, base), []).append(text)
    split = set()
    for u in units:
        parts = rebuilt[(u.source, u.name)]
        assert "".join(parts) == u.text  # nothing lost, parts consecutive
        if len(parts) > 1:
            split.add(u)
            assert count(longctx._render(u, u.text, u.name)) > window  # split only when alone too long
    assert counts["split_files"] + counts["split_documents"] == len(split)
    assert counts["parts"] == sum(len(rebuilt[(u.source, u.name)]) for u in split)


def test_stdlib_repositories_in_dependency_order(tmp_path):
    repos = [STDLIB / "json", STDLIB / "email"]
    units = longctx.repository_units(repos)
    samples, counts = pack_samples(units, 2048)
    _check_policy(units, samples, counts, 2048, longctx.approx_tokens)
    assert counts["files"] == len(units) > 20 and counts["split_files"] >= 1  # email has files > 2048 tokens
    # the order inside every sample respects the imports: a file's intra-repository dependency comes first
    for repo in repos:
        files = {u.name: u.text for u in units if u.source == repo.name}
        order, deps = order_repository(repo.name, files)
        assert [u.name for u in units if u.source == repo.name] == order
        for s in (s for s in samples if s.source == repo.name):
            names = [m.split(" (part ")[0] for m, _ in s.members]
            for i, a in enumerate(names):
                assert not (deps[a] & set(names[i + 1 :]) - set(names[: i + 1])) or _in_cycle(a, deps)
    report = longctx.length_report(samples, 2048, counts)
    assert report["samples"] == len(samples) and report["over_window"] == 0 and report["max"] <= 2048
    assert sum(report["histogram"].values()) == len(samples) and set(report["histogram"]) == {"1-1024", "1025-2048"}
    assert report["split_files"] == counts["split_files"] and 0 < report["fill"] <= 1


def _in_cycle(a, deps, seen=None):
    """True when `a` reaches itself through imports (a cycle: dependency order can only break it somewhere)."""
    stack, seen = list(deps[a]), set()
    while stack:
        b = stack.pop()
        if b == a:
            return True
        if b not in seen:
            seen.add(b)
            stack.extend(deps.get(b, ()))
    return False


def test_documents_and_the_written_report(tmp_path):
    (tmp_path / "docs").mkdir()
    long_doc = "\n".join(f"line {i} of the long one, with some words" for i in range(400))
    (tmp_path / "docs" / "a.txt").write_text("short document one\n" * 5)
    (tmp_path / "docs" / "b.txt").write_text(long_doc)
    (tmp_path / "docs" / "c.txt").write_text("short document three\n" * 5)
    samples, convs, report = longctx.build([STDLIB / "json"], [tmp_path / "docs"], window=600)
    units = longctx.repository_units([STDLIB / "json"]) + longctx.document_units([tmp_path / "docs"])
    _check_policy(units, samples, {k: report[k] for k in ("split_files", "split_documents", "parts")}, 600,
                  longctx.approx_tokens)
    assert report["documents"] == 3 and report["split_documents"] == 1 and report["by_kind"]["document"] >= 2
    paths = longctx.write(tmp_path / "out", samples, convs, report)
    assert json.loads(paths["report"].read_text())["samples"] == len(samples)
    assert len(paths["samples"].read_text().splitlines()) == len(samples)
    queries = [json.loads(x) for x in paths["queries"].read_text().splitlines()]
    assert all(q["messages"][-1]["role"] == "user" for q in queries) and len(queries) == len(convs)


def test_conversations_are_answered_by_the_context():
    samples, convs, report = longctx.build([STDLIB / "json"], [], window=1500)
    assert report["conversations"]["locate_definition"] == len(convs) > 0
    for c, s in zip(convs, samples):
        user, answer = c["messages"][0]["content"], c["messages"][1]["content"]
        name = user.split("`")[-2]
        assert user.startswith(s.text.rstrip()) and f"## {answer}" in s.text
        text = dict(s.members)
        assert any(f"def {name}" in t or f"class {name}" in t for m, t in text.items() if m.startswith(answer))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["r1", "r2", "documents"]), st.integers(1, 120), st.integers(1, 12)),
             min_size=1, max_size=25),
    st.integers(8, 150),
)
def test_packing_policy_holds_for_any_units(spec, window):
    units = []
    for i, (source, n_words, per_line) in enumerate(spec):
        lines = [" ".join(f"w{i}_{k}" for k in range(j, min(j + per_line, n_words))) for j in range(0, n_words, per_line)]
        kind = "document" if source == "documents" else "file"
        units.append(Unit(source, f"u{i}.py", "\n".join(lines) + "\n", kind, "python"))
    samples, counts = pack_samples(units, window, words)
    _check_policy(units, samples, counts, window, words)
    assert counts["files"] + counts["documents"] == len(units)


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        pack_samples([Unit("r", "a.py", "x\n")], 0)


def test_cli_writes_samples_conversations_queries_and_report(tmp_path, capsys):
    from ilm.cli import main

    assert main(["data", "longctx", "--repos", str(STDLIB / "json"), "--window", "1024", "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["window"] == 1024 and report["max"] <= 1024 and report["samples"] > 1
    assert "samples of <= 1,024 tokens" in capsys.readouterr().out
    assert main(["data", "longctx", "-o", str(tmp_path)]) != 0
    assert capsys.readouterr().err.strip() == "error: give --repos and/or --documents"


def test_pipeline_output_folders_are_inputs(tmp_path):
    """The folders `ilm data run -o` and `ilm data code -o` write are read as their kept documents: no KeyError
    on ledger.json or plan.json (what `--documents runs/demo/data` and `--repos runs/demo/code` hit)."""
    import pluggy

    from ilm.data import run_pipeline
    from ilm.data.code import run_code_pipeline
    from ilm.data.corpus import real_texts
    from ilm.data.io import list_inputs

    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(real_texts(max_docs=12))]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    run_pipeline(None, [tmp_path / "in.jsonl"], tmp_path / "data", workers=1)
    run_code_pipeline([Path(pluggy.__file__).parent], tmp_path / "code", sample_tokens=2048)
    for out in ("data", "code"):
        assert (tmp_path / out / "ledger.json").is_file()
        files = list_inputs([tmp_path / out])
        assert files and all(f.parent == tmp_path / out / "kept" for f in files), files
    units = longctx.document_units([tmp_path / "data"])
    assert {u.name for u in units} <= {d["id"] for d in docs} and units
    files = longctx.repository_units([tmp_path / "code"])
    assert files and {u.source for u in files} == {"pluggy"}
