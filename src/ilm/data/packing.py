"""From token shards to training rows: a deterministic weighted mixture of sources, packed into windows.

- Each source walks a seeded permutation of its documents, each document repeated by its epoch multiplier
  (code tiers: high several epochs, medium one, low none; a fractional part is a seeded coin flip), and
  starts a fresh permutation when it runs out.
- Mixture weights are shares of tokens, not of documents (a recipe's `{ long = 0.5, web = 0.4, code = 0.1 }`
  means half of the stage's tokens come from `long`). The next document comes from the source furthest
  below its target: the largest `weight * tokens_so_far - tokens_from_source`, ties to the first name.
  That is exact (every source stays within one document of its share) and needs no random draw; drawing
  sources per document would instead give each source tokens in proportion to weight x mean document
  length (equal weights on 1k- and 10k-token sources: 9% / 91% of the tokens).
- Rows hold `window` tokens with no padding. A document longer than the room left is split; its tail opens
  the next row as a document of its own (positions restart there, as for any document start).

Everything is a pure function of the seed and the number of rows taken so far; `state_dict()` captures that
position exactly (cursors, tokens taken per source, the pending tail), so a resumed run sees the same rows.
"""

from __future__ import annotations

import numpy as np
import torch

from ilm.data.shards import TokenShards
from ilm.train.losses import shift_labels


class _SourceCursor:
    def __init__(self, shards: TokenShards, seed: int):
        self.shards, self.seed = shards, seed
        self.epoch, self.pos = 0, 0
        self.order = self._order(0)

    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        e = self.shards.epochs
        repeats = np.floor(e).astype(np.int64) + (rng.random(len(e)) < (e - np.floor(e)))
        order = np.repeat(np.arange(len(e)), repeats)
        if len(order) == 0:
            raise ValueError(f"{self.shards.path}: every document has epoch multiplier 0; nothing to train on")
        return rng.permutation(order)

    def next(self) -> np.ndarray:
        if self.pos == len(self.order):
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = self._order(self.epoch)
        doc = self.shards.doc(int(self.order[self.pos]))
        self.pos += 1
        return doc

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = self._order(self.epoch)


class Packer:
    """Rows of `window` tokens from `sources`, each source's share of the tokens set by `weights`.

    `weights` are token shares (normalised to sum to 1); a source with weight 0 is left out.
    """

    def __init__(self, sources: dict[str, TokenShards], weights: dict[str, float], window: int, seed: int = 0):
        unknown = sorted(set(weights) - set(sources))
        if unknown:
            raise ValueError(f"mixture names unknown sources {unknown}; known: {sorted(sources)}")
        names = sorted(n for n, w in weights.items() if w > 0)
        if not names:
            raise ValueError("the mixture gives no source a positive weight")
        self.names = names
        self.shares = np.array([weights[n] for n in names], dtype=np.float64)
        self.shares /= self.shares.sum()
        self.window = window
        self.seed = seed
        self.cursors = {n: _SourceCursor(sources[n], seed=seed * 1_000_003 + i) for i, n in enumerate(names)}
        self.taken = [0] * len(names)  # tokens of the documents taken from each source so far
        self.leftover = np.zeros(0, dtype=np.uint32)
        self.rows_taken = 0

    def _next_source(self) -> int:
        """The source furthest below its token share (integer counts, one float64 comparison: deterministic)."""
        deficit = self.shares * sum(self.taken) - np.asarray(self.taken, dtype=np.float64)
        return int(np.argmax(deficit))

    def _next_doc(self) -> np.ndarray:
        if len(self.leftover):
            doc, self.leftover = self.leftover, np.zeros(0, dtype=np.uint32)
            return doc
        i = self._next_source()
        doc = self.cursors[self.names[i]].next()
        self.taken[i] += len(doc)
        return doc

    def next_row(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, document ids) of one row of `window` tokens."""
        ids = np.empty(self.window, dtype=np.int64)
        docs = np.empty(self.window, dtype=np.int64)
        filled, k = 0, 0
        while filled < self.window:
            doc = self._next_doc()
            take = min(len(doc), self.window - filled)
            ids[filled : filled + take] = doc[:take]
            docs[filled : filled + take] = k
            if take < len(doc):
                self.leftover = np.asarray(doc[take:])
            filled += take
            k += 1
        self.rows_taken += 1
        return ids, docs

    def next_batch(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.next_row() for _ in range(rows)]
        return (torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])))

    def state_dict(self) -> dict:
        return {
            "seed": self.seed, "window": self.window, "rows_taken": self.rows_taken,
            "taken": dict(zip(self.names, self.taken)), "leftover": self.leftover.tolist(),
            "cursors": {n: c.state() for n, c in self.cursors.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["window"] != self.window:
            raise ValueError(
                f"data state is for seed {state['seed']} / window {state['window']}, "
                f"not seed {self.seed} / window {self.window}"
            )
        if "taken" not in state:
            raise ValueError(
                "data state is from an ilm that drew mixture sources per document; this one mixes by token share "
                "and cannot continue that stage's rows exactly: resume with the ilm that wrote it, or start afresh"
            )
        if sorted(state["taken"]) != self.names:
            raise ValueError(f"data state is for sources {sorted(state['taken'])}, the stage mixes {self.names}")
        self.rows_taken = state["rows_taken"]
        self.taken = [int(state["taken"][n]) for n in self.names]
        self.leftover = np.asarray(state["leftover"], dtype=np.uint32)
        for n, c in self.cursors.items():
            c.load(state["cursors"][n])


def packed_labels(ids: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    """Next-token labels that never cross a document boundary (no token predicts the next document's start)."""
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return shift_labels(ids, ignore_mask=starts)
