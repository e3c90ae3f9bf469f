"""Reward-hacking detectors for the fast path: each looks at a round's rollout records and flags the
indices whose reward is high while some surface feature (length, repetition) is an outlier, with a reason.
A detector is any function `records -> [(index, reason)]`; `package.module:function` plugs one in."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ilm.train.rlhf.review import load_function

Detector = Callable[[list[dict]], list[tuple[int, str]]]


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD); a zero MAD falls back to the mean absolute deviation (or 1)."""
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    if mad == 0:
        mad = float(np.mean(np.abs(values - med))) or 1.0
    return (values - med) / mad


def repetition(text: str, n: int = 3) -> float:
    """Fraction of repeated word n-grams (0: none repeated)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _outliers(records: list[dict], feature: np.ndarray, name: str, quantile: float, z: float) -> list[tuple[int, str]]:
    rewards = np.array([r["rm_score"] for r in records], dtype=float)
    if len(records) < 4:
        return []
    high = rewards >= np.quantile(rewards, quantile)
    zs = robust_z(feature.astype(float))
    return [(int(i), f"{name} outlier (z {zs[i]:.1f}) with high reward {rewards[i]:.2f}")
            for i in np.flatnonzero(high & (zs > z))]


def length_detector(records: list[dict], quantile: float = 0.75, z: float = 3.0) -> list[tuple[int, str]]:
    """Reward high while the response is unusually long."""
    lengths = np.array([r.get("response_tokens", len(r["response"].split())) for r in records])
    return _outliers(records, lengths, "length", quantile, z)


def repetition_detector(records: list[dict], quantile: float = 0.75, z: float = 3.0) -> list[tuple[int, str]]:
    """Reward high while the response repeats itself unusually much."""
    return _outliers(records, np.array([repetition(r["response"]) for r in records]), "repetition", quantile, z)


DETECTORS: dict[str, Callable[..., list[tuple[int, str]]]] = {"length": length_detector,
                                                              "repetition": repetition_detector}


def detectors_from_names(names: list[str], quantile: float, z: float) -> list[Detector]:
    """Named built-ins get the recipe's quantile and z; a module:function is called with the records alone."""
    out: list[Detector] = []
    for name in names:
        if name in DETECTORS:
            fn = DETECTORS[name]
            out.append(lambda recs, fn=fn: fn(recs, quantile, z))
        elif ":" in name:
            out.append(load_function(name))
        else:
            raise ValueError(f"fast.detectors: unknown detector {name!r}; built in: {sorted(DETECTORS)}, "
                             "or give package.module:function")
    return out
