"""docs/recipe.md cannot drift: every number in its tables appears in the named file next to the named key,
and the named test exists. Also pins the recipe defaults that no other test holds."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "recipe.md"
HEADER = ["number", "what", "file", "key", "test"]
# a numeric literal as code writes it: 92_544, 92,544 (thousands groups), 4e-5, 0.90, 1_000_000.0
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?![\d])|\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)(?![\w])")
NEAR = 3  # lines either side of a line naming the key


def rows() -> list[dict[str, str]]:
    """Every row of every table whose header is HEADER, with the section it sits in."""
    out, section, in_table = [], "", False
    for n, line in enumerate(DOC.read_text().splitlines(), 1):
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if cells == HEADER:
            in_table = True
        elif in_table and not set("".join(cells)) <= set("-: "):
            assert len(cells) == len(HEADER), f"docs/recipe.md:{n}: {len(cells)} cells"
            out.append({**dict(zip(HEADER, (c.strip("`") for c in cells))), "line": n, "section": section})
    return out


def value(text: str) -> float:
    return float(text.replace("_", "").replace(",", ""))


def numbers_in(line: str) -> list[float]:
    found = []
    for m in NUMBER.finditer(line):
        try:
            found.append(value(m.group(1)))
        except ValueError:
            continue
    return found


def anchor(key: str) -> str:
    """What names the key in its file: the last identifier of `A.b`, `PRESETS["x"].field`, `stages[1].window`."""
    last = re.findall(r'"([^"]+)"|([A-Za-z_][\w-]*)', key)[-1]
    return last[0] or last[1]


def number_near_key(path: Path, number: str, key: str) -> bool:
    """True when `number` (its literal text, or any literal equal in value) is on a line within NEAR lines of
    a line that names the key."""
    lines = path.read_text().splitlines()
    name = anchor(key)
    literal = number.replace(" ", "")
    try:
        target = value(number)
    except ValueError:
        target = None
    for i, line in enumerate(lines):
        if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", line):
            continue
        for near in lines[max(0, i - NEAR): i + NEAR + 1]:
            if literal in near.replace(" ", ""):
                return True
            if target is not None and any(abs(x - target) <= 1e-12 * max(1.0, abs(target)) for x in numbers_in(near)):
                return True
    return False


def _functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}


ROWS = rows()


def test_the_doc_has_every_section_and_many_numbers():
    names = {r["section"] for r in ROWS}
    assert {"Model", "Tokenizer", "Pretraining data", "Pretraining", "SFT", "Reward model", "Online RLHF"} <= names
    assert len(ROWS) >= 60


@pytest.mark.parametrize("row", ROWS, ids=[f"L{r['line']}-{r['number']}" for r in ROWS])
def test_each_number_is_where_the_doc_says(row):
    path = REPO / row["file"]
    assert path.is_file(), f"docs/recipe.md:{row['line']}: no file {row['file']}"
    assert number_near_key(path, row["number"], row["key"]), (
        f"docs/recipe.md:{row['line']}: {row['number']} not found near {anchor(row['key'])!r} in {row['file']}")
    test_file, _, name = row["test"].partition("::")
    assert (REPO / test_file).is_file() and name in _functions(REPO / test_file), (
        f"docs/recipe.md:{row['line']}: no test {row['test']}")


def test_the_matcher_accepts_the_forms_code_uses_and_rejects_others(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('vocab_size: int = 92_544\nlr = 4e-5  # note\nmin_bytes: int = 32 * 1024\n"a": 1,\nn = 0.00004\n')
    assert number_near_key(f, "92544", "ModelConfig.vocab_size") and number_near_key(f, "92,544", "vocab_size")
    assert number_near_key(f, "4e-5", "optim.lr") and number_near_key(f, "32 * 1024", "X.min_bytes")
    assert not number_near_key(f, "92_545", "vocab_size")
    assert not number_near_key(f, "4e-5", "missing_key")
    far = tmp_path / "far.py"
    far.write_text("lr = 1\n" + "\n" * 10 + "x = 4e-5\n")
    assert not number_near_key(far, "4e-5", "lr")


def test_no_reference_outside_the_repository():
    """A user's clone has no ../shared: nothing shipped may point there."""
    offenders = []
    for root in ("src", "recipes", "benchmarks", "docs", "tests"):
        for p in (REPO / root).rglob("*"):
            if p.suffix in (".py", ".toml", ".md") and p.is_file() and p != Path(__file__).resolve():
                text = p.read_text(errors="replace")
                if "../shared" in text or "RECIPE.md" in text:
                    offenders.append(str(p.relative_to(REPO)))
    readme = (REPO / "README.md").read_text()
    assert "../shared" not in readme and "docs/recipe.md" in readme
    assert offenders == []


def test_defaults_pinned_here():
    """Recipe numbers that are dataclass defaults and that no other test holds."""
    from ilm.data.longtext import LongTextLength
    from ilm.model.generate import Sampling
    from ilm.train.reward import RMLoss
    from ilm.train.rlhf.ppo import PPOSection
    from ilm.train.rlhf.rounds import FastPath, RoundsConfig

    assert LongTextLength().min_bytes == 32 * 1024
    assert RMLoss().penalty_weight == 0.02 and RMLoss().gamma == 2.0
    assert PPOSection().kl_coef == 0.01 and Sampling().top_p == 0.9
    assert RoundsConfig().rounds == 3
    assert (FastPath().min_pairs, FastPath().max_pairs) == (20, 100)
    from ilm.data.longctx import DEFAULT_WINDOW

    assert DEFAULT_WINDOW == 32_768
