"""Each step on English and Chinese examples: it keeps what it should and drops with the right reason."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from ilm.data import run_pipeline
from ilm.data.classifier import (
    HashedLinearModel,
    QualityClassifierFilter,
    ToxicityFilter,
    read_labelled_csv,
    train,
)
from ilm.data.corpus import OTHER_LANG, TOXIC, ZH_TEXTS
from ilm.data.document import Document
from ilm.data.normalize import LanguageFilter, Normalize, normalise_text
from ilm.data.quality import C4Filter, GopherQuality, GopherRepetition, dup_ngram_fraction, top_ngram_fraction
from ilm.data.safety import SensitiveWords, UrlBlocklist

from .conftest import assert_balanced, write_shards

ZH_LONG = "\n".join(ZH_TEXTS)


def _doc(text: str, **meta: object) -> Document:
    return Document("x", text, "t", None, dict(meta))


def test_normalise() -> None:
    assert normalise_text("Cafe\u0301\u200b  au\t\tlait\x00\r\n\n\n\nnext  line ") == "Café au lait\n\nnext line"
    assert Normalize().apply(_doc(" \x07 \n\t")) == (None, "empty")


def test_language(real_texts: list[str]) -> None:
    f = LanguageFilter()
    assert f.filter(_doc(real_texts[0])) is True
    d = _doc(ZH_LONG)
    assert f.filter(d) is True and d.metadata["language"] == "zh"
    assert f.filter(_doc(OTHER_LANG[0])) == (False, "language_other")


def test_gopher_quality_english_and_chinese(real_texts: list[str]) -> None:
    g = GopherQuality()
    assert g.filter(_doc(real_texts[0])) is True
    assert g.filter(_doc("Too short to be a document.")) == (False, "gopher_too_few_words")
    assert g.filter(_doc(" ".join(["#tag"] * 30 + real_texts[0].split()[:60]))) == (False, "gopher_symbol_ratio")
    bullets = "\n".join(f"- item {w} and the {w}" for w in real_texts[0].split()[:60])
    assert g.filter(_doc(bullets)) == (False, "gopher_bullet_lines")
    nostop = " ".join(w for w in real_texts[0].split() if w.lower() not in {"the", "be", "to", "of", "and", "that", "have", "with"})
    assert g.filter(_doc(nostop)) == (False, "gopher_stop_words")
    assert g.filter(_doc(" ".join(["supercalifragilisticexpialidocious"] * 80))) == (False, "gopher_mean_word_length")
    assert g.filter(_doc(ZH_LONG, language="zh")) is True
    zh_nostop = "".join(c for c in ZH_LONG if c not in "的了是在和有我不这也")
    assert g.filter(_doc(zh_nostop, language="zh")) == (False, "gopher_stop_words")


def test_repetition(real_texts: list[str]) -> None:
    r = GopherRepetition()
    assert r.filter(_doc(real_texts[0])) is True
    assert r.filter(_doc("\n\n".join([real_texts[0].split("\n")[0]] * 5 + real_texts[1:3]))) == (False, "repetition_paragraphs")
    assert r.filter(_doc("\n".join([real_texts[0].split("\n")[0]] * 5 + real_texts[1:3]))) == (False, "repetition_lines")
    assert r.filter(_doc("Buy now and save. " * 50))[0] is False
    words = ["a", "b", "c", "a", "b", "x"]
    th = np.array([hash(w) & 0xFFFF for w in words], dtype=np.uint64)
    lens = np.array([len(w) for w in words])
    assert top_ngram_fraction(th, lens, 2, 6) == pytest.approx(4 / 6)  # "a b" twice = 4 of 6 characters
    assert dup_ngram_fraction(th, lens, 2, 6) == pytest.approx(2 / 6)  # the second "a b" only
    assert r.filter(_doc(ZH_LONG, language="zh")) is True
    assert r.filter(_doc(ZH_TEXTS[0][:40] * 30, language="zh"))[0] is False


def test_c4_lines(real_texts: list[str]) -> None:
    c4 = C4Filter()
    body = "\n".join(real_texts[:3]).replace("\n\n", "\n")
    text = "Home | Menu\n" + body + "\nPlease enable JavaScript to view comments.\nRead our privacy policy.\nShare this"
    out = c4.apply(_doc(text))
    assert isinstance(out, Document)
    assert "Menu" not in out.text and "JavaScript" not in out.text and "privacy" not in out.text and "Share this" not in out.text
    first = next(ln for ln in body.split("\n") if ln.endswith("."))
    assert out.metadata["c4_lines_removed"] >= 4 and first in out.text
    assert c4.apply(_doc(body + "\nLorem ipsum dolor sit amet.")) == (None, "c4_lorem_ipsum")
    assert c4.apply(_doc("One sentence only.\nAnd a second one.")) == (None, "c4_too_few_sentences")
    zh = c4.apply(_doc(ZH_LONG + "\n首页", language="zh"))
    assert isinstance(zh, Document) and "首页" not in zh.text and zh.text.startswith("书生")


def test_url_blocklist() -> None:
    f = UrlBlocklist(domains=["bad.example"])
    assert f.filter(_doc("t", url="https://www.pornhub.com/x")) == (False, "blocked_domain")  # packaged default list
    assert f.filter(_doc("t", url="http://sub.bad.example/page")) == (False, "blocked_domain")
    assert f.filter(_doc("t", url="https://notbad.example/")) is True
    assert f.filter(_doc("t")) is True


def test_sensitive_words_one_pass_english_and_chinese() -> None:
    s = SensitiveWords(path="", words=["rapist", "赌博", "hardcore sex"], max_hits=1)
    assert s.hits("The therapist said grapist is not a word.") == []  # whole words only for English
    assert s.hits("A RAPIST, and hardcore sex; 网络赌博网站") == ["rapist", "hardcore sex", "赌博"]
    assert s.filter(_doc("一个赌博网站和另一个赌博网站")) == (False, "sensitive_words")
    assert s.filter(_doc("一个赌博网站")) is True
    assert SensitiveWords().hits("这里有色情内容 and porn") == ["色情", "porn"]  # packaged default list


def test_default_toxicity_scorer(real_texts: list[str], tmp_path: Path) -> None:
    docs = [Document(f"ok{i}", t, "s", None, {"language": "en"}) for i, t in enumerate(real_texts[:20])]
    docs += [Document("toxic", TOXIC[0], "s", None, {"language": "en"}), Document("zh", ZH_LONG, "s", None, {"language": "zh"})]
    write_shards(tmp_path / "in", docs, 1)
    run_pipeline([ToxicityFilter()], tmp_path / "in", tmp_path / "out")
    kept, removed = assert_balanced(tmp_path / "out", [d.id for d in docs])
    assert [d.id for d in removed] == ["toxic"] and removed[0].metadata["toxicity"] > 0.9
    assert all(d.metadata.get("toxicity", 0) < 0.9 for d in kept) and "toxicity" not in next(d for d in kept if d.id == "zh").metadata


def _toxic_sentence(rng: random.Random) -> str:
    adj = ["stupid", "pathetic", "worthless", "dumb", "idiotic", "disgusting", "brainless"]
    noun = ["idiot", "moron", "loser", "clown", "jerk", "imbecile", "fool"]
    verb = ["shut up", "get lost", "go away", "nobody cares", "drop dead"]
    return f"you {rng.choice(adj)} {rng.choice(noun)}, {rng.choice(verb)}! you are a {rng.choice(adj)} {rng.choice(noun)}"


def _kaggle_csv(path: Path, real_texts: list[str], n: int, seed: int) -> None:
    rng = random.Random(seed)
    sentences = [s.strip() + "." for t in real_texts for s in t.split(". ") if len(s.split()) > 6]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", "toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"])
        for i in range(n):
            if rng.random() < 0.3:
                w.writerow([f"{i:x}", _toxic_sentence(rng), 1, 0, int(rng.random() < 0.3), 0, 1, 0])
            else:
                w.writerow([f"{i:x}", rng.choice(sentences), 0, 0, 0, 0, 0, 0])


def test_train_classifier_kaggle_format_cli_and_filter(real_texts: list[str], tmp_path: Path) -> None:
    from ilm.cli import main

    _kaggle_csv(tmp_path / "train.csv", real_texts[:600], 1500, 0)
    assert main(["data", "train-classifier", str(tmp_path / "train.csv"), "-o", str(tmp_path / "tox.npz"), "--epochs", "10"]) == 0
    model = HashedLinearModel.load(tmp_path / "tox.npz")
    assert model.labels == ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    _kaggle_csv(tmp_path / "test.csv", real_texts[600:], 400, 1)
    texts, y, _ = read_labelled_csv(tmp_path / "test.csv")
    p = model.predict_proba(texts)
    acc = ((p[:, 0] > 0.5) == (y[:, 0] == 1)).mean()
    assert acc > 0.95 and p[:, 1].max() < 0.5  # severe_toxic never positive in training: predicts its prior
    docs = [Document(f"ok{i}", t, "s") for i, t in enumerate(real_texts[700:720])]
    docs += [Document(f"bad{i}", ". ".join(_toxic_sentence(random.Random(i)) for _ in range(4)), "s") for i in range(5)]
    write_shards(tmp_path / "in", docs, 2)
    run_pipeline([ToxicityFilter(model=str(tmp_path / "tox.npz"), threshold=0.5, languages=[], labels=["toxic", "insult"])], tmp_path / "in", tmp_path / "out")
    _, removed = assert_balanced(tmp_path / "out", [d.id for d in docs])
    assert sorted(d.id for d in removed) == [f"bad{i}" for i in range(5)]


def _spam(rng: random.Random, real_texts: list[str]) -> str:
    """Low-quality web text: keyword-stuffed ads and menus built from real words."""
    words = [w for t in rng.sample(real_texts, 3) for w in t.split() if w.isalpha()]
    parts = []
    for _ in range(12):
        kw = " ".join(rng.sample(words, 2)).upper()
        parts.append(rng.choice([f"BUY {kw} NOW!!!", f"Best {kw} deals | Click here", f"FREE {kw} >> sign up today",
                                 f"Home | {kw} | Contact | Login", f"{kw} {kw} cheap {kw}"]))
    return "\n".join(parts)


def test_quality_classifier_same_interface(real_texts: list[str], tmp_path: Path) -> None:
    rng = random.Random(0)
    good = real_texts[:300]
    junk = [_spam(rng, real_texts) for _ in range(300)]
    y = np.array([[1]] * len(good) + [[0]] * len(junk))
    train(good + junk, y, ["quality"], epochs=10).save(tmp_path / "q.npz")
    docs = [Document(f"g{i}", t, "s") for i, t in enumerate(real_texts[600:630])]
    docs += [Document(f"j{i}", _spam(rng, real_texts), "s") for i in range(30)]
    write_shards(tmp_path / "in", docs, 1)
    run_pipeline([QualityClassifierFilter(model=str(tmp_path / "q.npz"), threshold=0.5)], tmp_path / "in", tmp_path / "out")
    kept, removed = assert_balanced(tmp_path / "out", [d.id for d in docs])
    good_kept = sum(d.id.startswith("g") for d in kept) / 30
    junk_removed = sum(d.id.startswith("j") for d in removed) / 30
    assert good_kept >= 0.9 and junk_removed >= 0.9, (good_kept, junk_removed)
