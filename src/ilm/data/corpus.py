"""A small built-in corpus made of real text that ships with Python, plus planted duplicates and junk.

Real text: the language reference topics in `pydoc_data.topics` and docstrings of standard-library
modules (read with `ast`, nothing imported or downloaded). `demo_corpus` then plants what the pipeline
must catch, with known answers: near-duplicates at known Jaccard, exact copies, boilerplate, spam,
toxic and sensitive text, a blocked domain, HTML pages, other languages, empty and malformed records.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ilm.data.document import Document

_CODEISH = re.compile(r"^\s{2,}|^>>>|^\.\. |^\*\*\*|^[-=~^]{4,}\s*$")


def _paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of reStructuredText-ish text, each reflowed onto one line."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(_CODEISH.match(ln) for ln in lines):
            continue
        p = " ".join(ln.strip() for ln in lines if ln.strip())
        if len(p.split()) >= 8 and p[-1:] in ".:!?)":
            yield p


def real_texts(min_words: int = 60, max_docs: int = 2000) -> list[str]:
    """Documents of real English prose from Python's own documentation and docstrings, deterministic order."""
    from pydoc_data.topics import topics

    sources: list[str] = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts or "idlelib" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 300:
                    sources.append(doc)
        if len(sources) > 6 * max_docs:
            break
    out: list[str] = []
    seen: set[str] = set()
    for src in sources:
        cur: list[str] = []
        n = 0
        for p in _paragraphs(src):
            cur.append(p)
            n += len(p.split())
            if n >= min_words:
                doc = "\n\n".join(cur)
                if doc not in seen:
                    seen.add(doc)
                    out.append(doc)
                cur, n = [], 0
        if len(out) >= max_docs:
            break
    return out[:max_docs]


ZH_TEXTS = [
    ("书生·浦语是一个开源的大语言模型系列。它的预训练数据包括网页、书籍和技术文献，经过格式清洗、规则过滤、去重、安全过滤和质量过滤。"
     "在去重阶段，我们对文档的五元组计算最小哈希签名，并且在相似度超过阈值时保留最新的一份文档。这样做可以减少重复内容对模型的影响，也能让训练更加稳定。"),
    ("长文本数据的处理有自己的特点。我们首先选出长度不少于三十二千字节的文档，然后用统计方法去掉没有意义的文本，最后用困惑度过滤。"
     "如果上文不能帮助模型预测下文，说明这段文本可能是拼接出来的，我们就把它去掉。不同领域的阈值并不一样，所以要分别设定。"),
    ("代码数据也需要清洗。所有的代码都被转换成统一的格式，同一个仓库里的文件会按照依赖关系重新排序，这样模型在训练时能够看到完整的上下文。"
     "对于质量过滤，我们结合了规则打分和模型打分，并且经过了三轮人工标注和重新训练，只在模型和人工判断一致的语言上使用模型分数。"),
]
OTHER_LANG = [
    ("Le chat dort sur le canapé depuis ce matin, et personne ne veut le réveiller parce qu'il a l'air si paisible. "
     "Nous avons donc décidé de préparer le déjeuner sans lui, en espérant qu'il se lèvera quand il sentira l'odeur du poisson."),
    ("Der Zug nach Berlin hatte heute wieder Verspätung, weil auf der Strecke Bauarbeiten stattfanden. Die Reisenden warteten geduldig "
     "auf dem Bahnsteig und tranken Kaffee, während die Durchsagen immer neue Zeiten ankündigten."),
]
TOXIC = [
    ("You are a stupid worthless idiot and everyone hates you. Shut up, you moron, nobody asked for your garbage opinion. "
     "Go away you pathetic loser, crawl back to whatever hole you came from. What a fucking idiot you are! "
     "This is the dumbest shit I have ever read, you stupid ass clown. Honestly you should be ashamed of yourself, dumbass. "
     "Every word you write is crap and you are too dumb to notice it. Get lost, idiot."),
]


def edit_words(text: str, fraction: float, rng: random.Random, vocab: list[str]) -> str:
    """Replace `fraction` of the words at random positions (a controlled near-duplicate)."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(len(words) * fraction))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def demo_documents(n_real: int = 400, seed: int = 0) -> tuple[list[Document], dict[str, Any]]:
    """Real documents plus planted cases; returns (documents, what was planted) in a shuffled order."""
    rng = random.Random(seed)
    texts = real_texts(min_words=150, max_docs=n_real + 2)
    spare, texts = texts[-2:], texts[:-2]
    vocab = sorted({w for t in texts[:50] for w in t.split() if w.isalpha()})
    docs: list[Document] = []
    t0 = 1_600_000_000
    for i, t in enumerate(texts):
        docs.append(Document(f"real-{i:05d}", t, "python-docs", t0 + i * 60, {"url": f"https://docs.python.org/3/doc/{i}"}))
    plan: dict[str, Any] = {"real": len(texts)}
    near = rng.sample(range(len(texts)), len(texts) // 10)
    for k, i in enumerate(near):  # a newer lightly edited copy: the copy must survive
        docs.append(Document(f"near-{k:05d}", edit_words(texts[i], 0.02, rng, vocab), "mirror", t0 + 10**7 + k, {}))
    plan["near_duplicates"] = len(near)
    exact = rng.sample(range(len(texts)), len(texts) // 20)
    for k, i in enumerate(exact):  # an older copy differing only in case and spacing: the original survives
        docs.append(Document(f"exact-{k:05d}", "  " + texts[i].upper().replace(" ", "   "), "mirror", t0 - 10**6, {}))
    plan["exact_duplicates"] = len(exact)
    junk = [
        ("short", "Click here."),
        ("spam", "\n".join(["BUY CHEAP WATCHES NOW!!! Best price guaranteed."] * 40)),
        ("lorem", "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20),
        ("empty", "   \n\t  "),
        ("menu", "\n".join(["Home", "About us", "Contact", "Privacy Policy", "Terms of Use"] * 5)),
    ]
    junk += [(f"toxic-{i}", t) for i, t in enumerate(TOXIC)]
    junk += [(f"other-lang-{i}", (t + " ") * 3) for i, t in enumerate(OTHER_LANG)]
    for name, text in junk:
        docs.append(Document(f"junk-{name}", text, "junk", t0, {}))
    docs.append(Document("blocked-site", spare[0], "web", t0, {"url": "https://www.pornhub.com/some/page"}))
    sensitive = spare[1] + "\n\nThis page links to porn, to porno sites, and to hardcore sex videos."
    docs.append(Document("sensitive", sensitive, "web", t0, {"url": "https://example.org/x"}))
    for i, t in enumerate(ZH_TEXTS):
        docs.append(Document(f"zh-{i}", t, "zh", t0 + i, {}))
    for i, t in enumerate(texts[-5:]):
        html = f"<html><head><title>Doc {i}</title></head><body><nav><a href='/'>Home</a> | <a href='/a'>About</a></nav>" \
               f"<article>{''.join(f'<p>{p}</p>' for p in t.split(chr(10) * 2))}</article><footer>(c) 2024 Example</footer></body></html>"
        docs.append(Document(f"html-{i}", html, "web", t0 + 10**8 + i, {"format": "html", "url": f"https://example.com/{i}"}))
    plan["junk"] = len(junk) + 2
    rng.shuffle(docs)
    return docs, plan


def write_demo_corpus(out_dir: str | Path, n_shards: int = 4, n_real: int = 400, seed: int = 0,
                      malformed: bool = True) -> tuple[list[Path], dict[str, Any]]:
    """Write the demo corpus as `n_shards` jsonl.zst files (one malformed line planted); returns paths, plan."""
    from ilm.data.io import ShardWriter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs, plan = demo_documents(n_real, seed)
    paths = []
    for s in range(n_shards):
        part = docs[s::n_shards]
        if malformed and s == 0:
            path = out / f"corpus-{s:03d}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for i, d in enumerate(part):
                    f.write(json.dumps(d.to_record(), ensure_ascii=False) + "\n")
                    if i == 3:
                        f.write('{"id": "broken", "text": "this line is not valid json\n')
            plan["malformed_lines"] = 1
        else:
            path = out / f"corpus-{s:03d}.jsonl.zst"
            w = ShardWriter(path)
            for d in part:
                w.write(d)
            w.close()
        paths.append(path)
    plan["documents"] = len(docs) + (1 if malformed else 0)
    return paths, plan
