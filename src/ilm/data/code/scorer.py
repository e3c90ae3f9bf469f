"""The code quality model: trained on human labels, trusted only where it agrees with them.

The model is the general hashed n-gram linear classifier (`ilm.data.classifier`) with one label, `good`.
Training holds out part of the labelled files of each language, and measures per language how well the
model's verdicts agree with the people's (accuracy and Cohen's kappa). Those numbers are saved inside the
model file, so a pipeline run reads the trusted languages from the model itself: the scorer step scores
only files whose language reached `min_agreement`, every other file keeps its rule score alone.

Active labelling (the seed ran three rounds): `export_uncertain` writes the files the current model is
least sure about (probability nearest 0.5) for a person to label; their labels join the labelled set,
`train_code_scorer` retrains and re-measures agreement; repeat.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ilm.data.base import Context, Step
from ilm.data.classifier import HashedLinearModel, train
from ilm.data.document import Document

LABEL = "good"


@dataclass
class Labelled:
    """One human-labelled file: its text, language, and 1 = good / 0 = bad."""

    id: str
    text: str
    language: str
    label: int


@dataclass
class CodeQualityModel:
    """A hashed linear model plus the per-language agreement measured when it was trained."""

    model: HashedLinearModel
    agreement: dict[str, dict[str, float]]
    min_agreement: float = 0.6  # Cohen's kappa a language needs before the model is used on it
    metric: str = "kappa"
    info: dict[str, Any] = field(default_factory=dict)
    max_chars: int = 4000

    def trusted(self, language: str, min_agreement: float | None = None) -> bool:
        a = self.agreement.get(language)
        t = self.min_agreement if min_agreement is None else min_agreement
        return a is not None and a.get(self.metric, -1.0) >= t

    def predict(self, texts: list[str]) -> np.ndarray:
        return self.model.predict_proba([t[: self.max_chars] for t in texts])[:, 0]

    def save(self, path: str | Path) -> None:
        """One .npz; `HashedLinearModel.load` still reads it (the extra array is ignored there)."""
        m = self.model
        cfg = json.dumps({"labels": m.labels, "n_features": m.n_features, "kind": "ilm.hashed_linear"})
        meta = json.dumps({"agreement": self.agreement, "min_agreement": self.min_agreement, "metric": self.metric,
                           "info": self.info, "max_chars": self.max_chars}, sort_keys=True)
        with open(path, "wb") as f:
            np.savez_compressed(f, coef=m.coef.astype(np.float32), intercept=m.intercept, config=np.array(cfg),
                                code_meta=np.array(meta))

    @classmethod
    def load(cls, path: str | Path) -> CodeQualityModel:
        model = HashedLinearModel.load(path)
        with np.load(path, allow_pickle=False) as z:
            if "code_meta" not in z:
                raise ValueError(f"{path}: a plain classifier without measured agreement; train it with train_code_scorer")
            meta = json.loads(str(z["code_meta"]))
        return cls(model, meta["agreement"], meta["min_agreement"], meta["metric"], meta.get("info", {}), meta.get("max_chars", 4000))


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Chance-corrected agreement of two 0/1 label vectors (1 = perfect, 0 = chance)."""
    a, b = np.asarray(a, int), np.asarray(b, int)
    if a.size == 0:
        return float("nan")
    po = float((a == b).mean())
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return 1.0 if pe >= 1.0 else (po - pe) / (1 - pe)


def measure_agreement(model: CodeQualityModel, sample: list[Labelled]) -> dict[str, dict[str, float]]:
    """Per language: files, accuracy and kappa of the model's verdict (p >= 0.5) against the labels."""
    out: dict[str, dict[str, float]] = {}
    if not sample:
        return out
    p = model.predict([s.text for s in sample])
    langs = np.array([s.language for s in sample])
    y = np.array([s.label for s in sample])
    for lang in sorted(set(langs.tolist())):
        sel = langs == lang
        pred = (p[sel] >= 0.5).astype(int)
        k = cohen_kappa(pred, y[sel])
        out[lang] = {"n": int(sel.sum()), "accuracy": round(float((pred == y[sel]).mean()), 4),
                     "kappa": -1.0 if np.isnan(k) else round(k, 4)}
    return out


def split_holdout(items: list[Labelled], fraction: float, seed: int) -> tuple[list[Labelled], list[Labelled]]:
    """A per-language random hold-out (stratified by label) for measuring agreement."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[Labelled]] = {}
    for it in items:
        groups.setdefault((it.language, it.label), []).append(it)
    tr, ho = [], []
    for key in sorted(groups):
        g = groups[key]
        order = rng.permutation(len(g))
        k = round(len(g) * fraction) if len(g) > 1 else 0
        ho.extend(g[i] for i in order[:k])
        tr.extend(g[i] for i in order[k:])
    return tr, ho


def train_code_scorer(labelled: list[Labelled], holdout: float = 0.3, min_agreement: float = 0.6, seed: int = 0,
                      n_features: int = 1 << 16, epochs: int = 20, max_chars: int = 4000) -> CodeQualityModel:
    """Fit on part of the labels, measure per-language agreement on the rest, keep both in the model."""
    if len({it.label for it in labelled}) < 2:
        raise ValueError("labelled files must include both good (1) and bad (0) examples")
    tr, ho = split_holdout(labelled, holdout, seed)
    y = np.array([[it.label] for it in tr], dtype=np.int8)
    hl = train([it.text[:max_chars] for it in tr], y, [LABEL], n_features=n_features, epochs=epochs, seed=seed)
    m = CodeQualityModel(hl, {}, min_agreement, max_chars=max_chars,
                         info={"train_files": len(tr), "holdout_files": len(ho)})
    m.agreement = measure_agreement(m, ho)
    return m


def uncertainty(p: np.ndarray) -> np.ndarray:
    """1 at p = 0.5, 0 at p in {0, 1}."""
    return 1.0 - 2.0 * np.abs(np.asarray(p) - 0.5)


def select_uncertain(model: CodeQualityModel, docs: list[Document], n: int, exclude: Iterable[str] = ()) -> list[tuple[Document, float]]:
    """The n unlabelled documents the model is least sure about (ties: by id), with their probability."""
    skip = set(exclude)
    pool = [d for d in docs if d.id not in skip]
    if not pool:
        return []
    p = model.predict([code_text(d) for d in pool])
    u = uncertainty(p)
    order = sorted(range(len(pool)), key=lambda i: (-u[i], pool[i].id))[:n]
    return [(pool[i], float(p[i])) for i in order]


def export_uncertain(model: CodeQualityModel, docs: list[Document], n: int, out_path: str | Path,
                     exclude: Iterable[str] = ()) -> int:
    """Write the n most uncertain files as jsonl with an empty `label` for a person to fill (1 good, 0 bad)."""
    chosen = select_uncertain(model, docs, n, exclude)
    with open(out_path, "w", encoding="utf-8") as f:
        for d, p in chosen:
            rec = {"id": d.id, "repo": d.metadata.get("repo"), "path": d.metadata.get("path"),
                   "language": d.metadata.get("language", ""), "model_score": round(p, 4), "label": None,
                   "text": code_text(d)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return len(chosen)


def code_text(doc: Document) -> str:
    """The raw code of a file document (markdown blocks are unwrapped)."""
    if doc.metadata.get("format") == "markdown":
        from ilm.data.code.format import parse_markdown

        return parse_markdown(doc.text)[2]
    return doc.text


def read_labels(paths: Iterable[str | Path]) -> list[Labelled]:
    """Labelled jsonl (as exported, `label` filled with 1/0, good/bad or a score in [0, 1]); unlabelled rows skipped."""
    out: dict[str, Labelled] = {}
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                r = json.loads(line)
                lab = r.get("label")
                if lab is None or lab == "":
                    continue
                if isinstance(lab, str):
                    lab = 1 if lab.strip().lower() in ("1", "good", "high", "yes", "true") else 0
                else:
                    lab = 1 if float(lab) >= 0.5 else 0
                key = str(r.get("id") or f"{p}:{i}")
                out[key] = Labelled(key, r.get("text") or r.get("content") or "", str(r.get("language", "")), lab)
    return list(out.values())


@dataclass
class CodeQualityScorer(Step):
    """Adds model_score to files whose language the model is trusted on; never drops (tiers decide)."""

    type: ClassVar[str] = "code_quality_model"
    model: str = ""  # a model saved by train_code_scorer; empty = the step passes files through
    min_agreement: float = -1.0  # < 0: use the threshold stored with the model
    batch_size: int = 256

    def __post_init__(self) -> None:
        self._m: CodeQualityModel | None = None

    def scorer(self) -> CodeQualityModel:
        if self._m is None:
            self._m = CodeQualityModel.load(self.model)
        return self._m

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        if not self.model:
            yield from docs
            return
        batch: list[Document] = []
        for d in docs:
            batch.append(d)
            if len(batch) >= self.batch_size:
                yield from self._score(batch, ctx)
                batch = []
        yield from self._score(batch, ctx)

    def _score(self, batch: list[Document], ctx: Context) -> Iterator[Document]:
        m = self.scorer()
        thr = None if self.min_agreement < 0 else self.min_agreement
        todo = [d for d in batch if m.trusted(d.metadata.get("language", ""), thr)]
        if todo:
            for d, p in zip(todo, m.predict([code_text(d) for d in todo])):
                d.metadata["model_score"] = round(float(p), 4)
            ctx.count("code_model_scored", len(todo))
        for d in batch:
            d.metadata["model_trusted"] = "model_score" in d.metadata
        yield from batch

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_m"] = None
        return state
