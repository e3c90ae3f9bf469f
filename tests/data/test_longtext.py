"""Long text: length and statistical filters; the perplexity-difference filter with a model trained here.

The model: the `tiny` preset (vocabulary 640) trained for 150 AdamW steps on documents whose words come
from one of 40 overlapping topics (8 real English words each, from Python's docs), so that knowing the
earlier text narrows the next words: context genuinely helps. Coherent documents are then compared with
the same paragraphs shuffled across documents.
"""

from __future__ import annotations

import json
import random
import string
from collections import Counter
from pathlib import Path

import pytest

from ilm.data import run_pipeline
from ilm.data.document import Document
from ilm.data.io import read_all, write_documents
from ilm.data.longtext import LongTextLength, LongTextStats, PerplexityDifference, boundary_report
from ilm.data.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
S = 32  # S1 and S2 lengths in tokens


@pytest.fixture(scope="module")
def prose() -> list[str]:
    from ilm.data.corpus import real_texts

    return real_texts(min_words=60, max_docs=400)


def long_docs(texts: list[str], n: int, size: int = 40_000) -> list[str]:
    out, cur = [], []
    for t in texts:
        cur.append(t)
        if sum(map(len, cur)) >= size:
            out.append("\n\n".join(cur))
            cur = []
            if len(out) == n:
                break
    return out


def test_length_and_statistical_filters(prose: list[str], tmp_path: Path) -> None:
    rng = random.Random(0)
    real = long_docs(prose, 6)
    vocab = sorted({w.strip(".,;:()").lower() for t in prose for w in t.split() if w.isalpha()})
    junk = {
        "low_compression_ratio": (prose[0] + "\n") * 60,
        "high_compression_ratio": "\n".join("".join(rng.choice(string.ascii_letters + string.digits + "+/=!#$%&*") for _ in range(76)) for _ in range(600)),
        "short_lines": "\n".join(rng.choice(vocab) for _ in range(6000)),
        "no_punctuation": "\n".join(" ".join(rng.choice(vocab) for _ in range(14)) for _ in range(500)),
        "no_connectives": "\n".join(" ".join(f"{rng.randint(0, 999)}.{rng.randint(0, 9)}," for _ in range(8)) for _ in range(900)),
    }
    docs = [Document(f"real-{i}", t) for i, t in enumerate(real)] + [Document(f"junk-{k}", t) for k, t in junk.items()]
    docs.append(Document("short", prose[1]))
    write_documents(tmp_path / "in.jsonl", docs)
    ledger = run_pipeline([LongTextLength(), LongTextStats()], [tmp_path / "in.jsonl"], tmp_path / "out")
    kept = {d.id for d in read_all(tmp_path / "out" / "kept")}
    removed = {d.id: d.metadata["removed"]["reason"] for d in read_all(tmp_path / "out" / "removed")}
    print(f"long text: {len(real)} real documents kept of {len(real)}; junk removed as {removed}")
    assert kept == {f"real-{i}" for i in range(len(real))}
    assert removed == {"short": "too_short", **{f"junk-{k}": k for k in junk}}
    assert ledger["balanced"]


# ------------------------------------------------------------------ the perplexity-difference filter


def topic_corpus() -> tuple[list[str], list[list[str]], callable]:
    from ilm.data.corpus import real_texts

    counts = Counter(w for t in real_texts(min_words=60, max_docs=200) for w in t.lower().split() if w.isalpha() and 3 <= len(w) <= 6)
    pool = sorted(w for w, _ in counts.most_common(80))
    trng = random.Random(7)
    topics = [trng.sample(pool, 8) for _ in range(40)]  # overlapping: each word sits in ~4 topics

    def make_doc(r: random.Random) -> list[str]:
        bag = r.choice(topics)
        return [" ".join(" ".join(r.choice(bag) for _ in range(r.randint(5, 9))) + "." for _ in range(4)) for _ in range(4)]

    return pool, topics, make_doc


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, callable]:
    import torch
    import torch.nn.functional as F

    from ilm.model import build_model, get_preset
    from ilm.model.hf import save_checkpoint
    from ilm.tokenizer import train_tokenizer

    tmp = tmp_path_factory.mktemp("ppl")
    _, _, make_doc = topic_corpus()
    r = random.Random(1)
    train_docs = [" ".join(make_doc(r)) for _ in range(800)]
    (tmp / "corpus.txt").write_text("\n".join(train_docs))
    tok = train_tokenizer([tmp / "corpus.txt"], tmp / "tok", vocab_size=640)
    torch.manual_seed(0)
    model = build_model(get_preset("tiny", vocab_size=640))
    ids = [tok.encode(d) for d in train_docs]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        rows = []
        for _ in range(16):
            s = ids[int(torch.randint(len(ids), (1,), generator=g))]
            st = int(torch.randint(max(len(s) - 2 * S, 1), (1,), generator=g))
            rows.append([tok.bos_id] + s[st : st + 2 * S])
        x = torch.tensor(rows)
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"tiny model trained: final loss {float(loss.detach()):.2f}")
    save_checkpoint(model, tmp / "ckpt")
    tok.save(tmp / "ckpt")
    return tmp / "ckpt", make_doc


def test_perplexity_difference_drops_shuffled_text(checkpoint: tuple[Path, callable], tmp_path: Path) -> None:
    ckpt, make_doc = checkpoint
    r = random.Random(2)
    test = [make_doc(r) for _ in range(60)]
    paras = [p for d in test for p in d]
    r.shuffle(paras)
    docs = [Document(f"coherent-{i}", "\n\n".join(d), metadata={"domain": "web"}) for i, d in enumerate(test)]
    docs += [Document(f"shuffled-{i // 4}", "\n\n".join(paras[i : i + 4]), metadata={"domain": "web"}) for i in range(0, len(paras), 4)]
    docs += [Document(f"lenient-{i}", d.text, metadata={"domain": "books"}) for i, d in enumerate(docs[60:90])]
    write_documents(tmp_path / "in.jsonl", docs)
    steps, _ = load_recipe(REPO / "recipes" / "data" / "longtext.toml")
    ppl = next(s for s in steps if isinstance(s, PerplexityDifference))
    ppl.checkpoint, ppl.s1_tokens, ppl.s2_tokens, ppl.batch_size = str(ckpt), S, S, 32
    ppl.thresholds = {"books": 1e9}  # per-domain threshold: this domain is never dropped
    ledger = run_pipeline([ppl], [tmp_path / "in.jsonl"], tmp_path / "out")
    removed = [d for d in read_all(tmp_path / "out" / "removed")]
    dropped = Counter(d.id.split("-")[0] for d in removed)
    rate = {k: dropped[k] / n for k, n in (("coherent", 60), ("shuffled", 60), ("lenient", 30))}
    print(f"perplexity-difference drop rate: coherent {rate['coherent']:.2f}, shuffled {rate['shuffled']:.2f}, "
          f"shuffled under a per-domain threshold {rate['lenient']:.2f}")
    # Bounds from the measured spread, not one draw. A coherent document's paragraphs come from one topic,
    # but S2 alone reveals its topic within a few tokens, so its ratio sits just below 1 and a share of
    # coherent documents lands above 1 by chance. Measured (2026-12-07, 1 and 2 threads alike) on this
    # fixture's model (150 steps) and on the same model trained 300 / 450 steps: coherent 0.23 / 0.35 /
    # 0.20, shuffled 0.87 / 0.92 / 0.88; a rate over 60 documents has a binomial sd of ~0.06. The old
    # bound (coherent <= 0.25) sat inside that spread (a fresh clone measured 0.30); these sit >= 1.5 sd
    # outside every measured model, and a filter that does not tell the two apart still fails them.
    assert rate["shuffled"] >= 0.7 and rate["coherent"] <= 0.45
    assert rate["shuffled"] - rate["coherent"] >= 0.4
    assert rate["lenient"] == 0.0
    assert all(d.metadata["removed"]["reason"] == "context_hurts" and d.metadata["ppl"]["ppl_ratio"] > 1.0 for d in removed)
    assert ledger["balanced"]

    # boundary report: per domain, the kept documents just below and the dropped ones just above
    md = boundary_report(tmp_path / "out", n=3)
    html = boundary_report(tmp_path / "out", n=3, fmt="html")
    text = md.read_text()
    scored = [d for d in read_all(tmp_path / "out" / "kept") + removed if d.metadata.get("domain") == "web"]
    above = sorted((d for d in scored if d.metadata["ppl"]["ppl_ratio"] > 1.0), key=lambda d: d.metadata["ppl"]["ppl_ratio"])[:3]
    below = sorted((d for d in scored if d.metadata["ppl"]["ppl_ratio"] <= 1.0), key=lambda d: -d.metadata["ppl"]["ppl_ratio"])[:3]
    assert "## web: threshold 1.0" in text and "## books: threshold 1000000000.0" in text
    web = text.split("## web")[1]
    for d in above + below:
        assert f"| {d.id} | {d.metadata['ppl']['ppl_ratio']:.4f} |" in web
    assert "<table>" in html.read_text() and "start of S2" in html.read_text()
    from ilm.cli import main

    assert main(["data", "longtext-report", str(tmp_path / "out"), "--out", str(tmp_path / "r.md"), "-n", "2"]) == 0
    assert "## web: threshold 1.0" in (tmp_path / "r.md").read_text()
    json.dumps(ledger)


def test_short_documents_pass_unscored() -> None:
    step = PerplexityDifference(s1_tokens=8, s2_tokens=8, min_tokens=16)
    assert step.split(list(range(10))) is None
    assert step.split(list(range(12))) is None
    s1, s2 = step.split(list(range(100)))
    assert (len(s1), len(s2)) == (8, 8)
    s1, s2 = PerplexityDifference(s1_tokens=8, s2_tokens=8, min_tokens=4).split(list(range(10)))
    assert (len(s1), len(s2)) == (5, 5)
