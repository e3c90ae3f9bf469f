"""Trainable text classifiers behind one interface: toxicity (Kaggle Toxic Comment format) and quality.

A model is a hashed n-gram linear model (fastText-like features: word 1-2-grams plus character 2-4-grams,
so Chinese needs no segmenter) with one logistic output per label, trained by scikit-learn's SGD. It is
saved as a plain .npz (weights + JSON config), never a pickle. The default toxicity scorer needs no
training data: alt-profanity-check's bundled English model.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ilm.data.base import Context, Step
from ilm.data.document import Document

KAGGLE_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


class Scorer(Protocol):
    labels: list[str]

    def predict_proba(self, texts: list[str]) -> np.ndarray: ...


def _features(texts: list[str], n_features: int) -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.preprocessing import normalize

    word = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm=None,
                             token_pattern=r"(?u)\b\w+\b")
    char = HashingVectorizer(n_features=n_features, analyzer="char_wb", ngram_range=(2, 4), alternate_sign=False, norm=None)
    x = word.transform(texts) + char.transform(texts)
    x.data = np.log1p(x.data)
    return normalize(x)


@dataclass
class HashedLinearModel:
    """One logistic regression per label over hashed word and character n-grams."""

    labels: list[str]
    coef: np.ndarray  # (labels, n_features) float32
    intercept: np.ndarray  # (labels,)
    n_features: int = 1 << 18

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        x = _features(texts, self.n_features)
        z = np.asarray(x @ self.coef.T) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path) -> None:
        cfg = json.dumps({"labels": self.labels, "n_features": self.n_features, "kind": "ilm.hashed_linear"})
        with open(path, "wb") as f:
            np.savez_compressed(f, coef=self.coef.astype(np.float32), intercept=self.intercept, config=np.array(cfg))

    @classmethod
    def load(cls, path: str | Path) -> HashedLinearModel:
        with np.load(path, allow_pickle=False) as z:
            cfg = json.loads(str(z["config"]))
            return cls(cfg["labels"], z["coef"], z["intercept"], int(cfg["n_features"]))


def train(texts: list[str], targets: np.ndarray, labels: list[str], n_features: int = 1 << 18,
          epochs: int = 15, alpha: float = 1e-5, seed: int = 0) -> HashedLinearModel:
    """Fit one SGD logistic regression per label column of `targets` (n, labels) in {0, 1}."""
    from sklearn.linear_model import SGDClassifier

    x = _features(texts, n_features)
    coef = np.zeros((len(labels), n_features), dtype=np.float32)
    intercept = np.zeros(len(labels))
    for j in range(len(labels)):
        y = targets[:, j].astype(int)
        if y.min() == y.max():  # a label never (or always) seen: predict its prior
            p = min(max(y.mean(), 1e-4), 1 - 1e-4)
            intercept[j] = np.log(p / (1 - p))
            continue
        clf = SGDClassifier(loss="log_loss", alpha=alpha, max_iter=epochs, tol=None, random_state=seed,
                            class_weight="balanced")
        clf.fit(x, y)
        coef[j] = clf.coef_[0]
        intercept[j] = clf.intercept_[0]
    return HashedLinearModel(list(labels), coef, intercept, n_features)


def read_labelled_csv(path: str | Path, text_column: str = "comment_text",
                      label_columns: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Kaggle Toxic Comment CSV (id, comment_text, six 0/1 label columns) or any text + 0/1 columns."""
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.DictReader(f)
        fields = rows.fieldnames or []
        if text_column not in fields:
            raise ValueError(f"{path}: no column {text_column!r} (columns: {fields})")
        labels = label_columns or [c for c in KAGGLE_LABELS if c in fields]
        missing = [c for c in labels if c not in fields]
        if missing or not labels:
            raise ValueError(f"{path}: label columns {missing or labels} not found (columns: {fields})")
        texts, ys = [], []
        for r in rows:
            texts.append(r[text_column] or "")
            ys.append([1 if (r[c] or "0").strip() not in ("0", "", "0.0", "false", "False") else 0 for c in labels])
    return texts, np.array(ys, dtype=np.int8).reshape(-1, len(labels)), labels


class ProfanityCheckScorer:
    """alt-profanity-check's bundled English model (a linear SVM with calibrated probabilities)."""

    labels: ClassVar[list[str]] = ["toxic"]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from profanity_check import predict_prob

            return np.asarray(predict_prob(texts), dtype=float).reshape(-1, 1)


def load_scorer(model: str) -> Scorer:
    """'' or 'profanity-check' = the bundled default; otherwise a path to a model saved by train-classifier."""
    if model in ("", "profanity-check", "default"):
        return ProfanityCheckScorer()
    return HashedLinearModel.load(model)


@dataclass
class ClassifierFilter(Step):
    """Scores documents in batches; drops when the max over `labels` is above (or below) the threshold.

    Documents whose metadata.language is not in `languages` pass unscored (a model is only trusted on the
    languages it was trained for). The score goes to metadata[score_key].
    """

    type: ClassVar[str] = "classifier"
    model: str = ""
    labels: list[str] = field(default_factory=list)
    threshold: float = 0.5
    drop_when: str = "above"
    languages: list[str] = field(default_factory=list)
    score_key: str = "score"
    reason: str = "classifier"
    max_chars: int = 4000
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.drop_when not in ("above", "below"):
            raise ValueError("drop_when must be 'above' or 'below'")
        self._scorer: Scorer | None = None

    def scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = load_scorer(self.model)
        return self._scorer

    def scores(self, texts: list[str]) -> np.ndarray:
        sc = self.scorer()
        p = sc.predict_proba([t[: self.max_chars] for t in texts])
        cols = [sc.labels.index(lab) for lab in self.labels] if self.labels else list(range(p.shape[1]))
        return p[:, cols].max(axis=1)

    def run(self, docs: Iterator[Document], ctx: Context) -> Iterator[Document]:
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                yield from self._judge(batch, ctx)
                batch = []
        if batch:
            yield from self._judge(batch, ctx)

    def _judge(self, batch: list[Document], ctx: Context) -> Iterator[Document]:
        todo = [d for d in batch if not self.languages or d.metadata.get("language", self.languages[0]) in self.languages]
        if todo:
            for d, s in zip(todo, self.scores([d.text for d in todo])):
                d.metadata[self.score_key] = round(float(s), 4)
        for d in batch:
            s = d.metadata.get(self.score_key)
            if s is not None and (s > self.threshold if self.drop_when == "above" else s < self.threshold):
                ctx.drop(d, self.reason)
            else:
                yield d

    def __getstate__(self) -> dict[str, Any]:  # the loaded model is rebuilt in each worker
        state = dict(self.__dict__)
        state["_scorer"] = None
        return state


@dataclass
class ToxicityFilter(ClassifierFilter):
    """Safety: drop toxic documents. Default scorer: alt-profanity-check (English); or a Kaggle-trained model."""

    type: ClassVar[str] = "toxicity"
    threshold: float = 0.9
    languages: list[str] = field(default_factory=lambda: ["en"])
    score_key: str = "toxicity"
    reason: str = "toxic"


@dataclass
class QualityClassifierFilter(ClassifierFilter):
    """Model-based quality: drop documents whose quality probability is below the threshold."""

    type: ClassVar[str] = "quality_classifier"
    drop_when: str = "below"
    score_key: str = "quality"
    reason: str = "low_quality_model"
