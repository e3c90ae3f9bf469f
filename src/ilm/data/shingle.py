"""Shingles for MinHash, vectorised: a batch of documents is one UTF-8 buffer, words are found and hashed with
array operations (prefix polynomial hashes) and 5-gram hashes are rolled from word hashes; `shingles()` and
`shingle_hashes_reference` are the simple per-document paths the fast one is pinned to (same sets, same
hashes, same order). `ilm.data.minhash` turns the hashes into signatures and bands (its docstring: the scheme).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from ilm.data.base import CJK_RE, cjk_fraction

NGRAM = 5
_P1 = np.uint64(0x100000001B3)  # odd: invertible mod 2^64
_P2 = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_WORD_BYTES = np.zeros(256, dtype=bool)
for _c in b"0123456789abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _WORD_BYTES[_c] = True
_WORD_BYTES[0x80:] = True
_WORD_TABLE = _WORD_BYTES.astype(np.uint8).tobytes()  # bytes.translate table: byte -> is a word byte
_WORD_RE = re.compile(rb"[0-9a-zA-Z_\x80-\xff]+")
SPACE_CODEPOINTS = frozenset(
    [9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    + list(range(0x2000, 0x200B))
)
_SPACE_ARR = np.array(sorted(SPACE_CODEPOINTS), dtype=np.uint32)
GROUP_CHARS = 1 << 18  # characters of documents shingled together as one buffer
_SPACE_LUT = np.zeros(0x3002, dtype=bool)  # code point (clipped to 0x3001) -> is a space
_SPACE_LUT[_SPACE_ARR] = True


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, elementwise (wrapping uint64 arithmetic)."""
    h = h ^ (h >> _S33)
    h = h * _M1
    h = h ^ (h >> _S33)
    h = h * _M2
    return h ^ (h >> _S33)


@lru_cache(maxsize=8)
def is_cjk(text: str) -> bool:
    return cjk_fraction(text) >= 0.3


def shingles(text: str, n: int = NGRAM) -> set[str]:
    """Reference shingle set of one document (pure Python; identical sets to the vectorised path)."""
    low = text.lower()
    if is_cjk(text):
        toks = [c for c in low if ord(c) not in SPACE_CODEPOINTS]
        sep = ""
    else:
        toks = [w.decode("utf-8", "surrogateescape") for w in _WORD_RE.findall(low.encode("utf-8", "surrogatepass"))]
        sep = " "
    if not toks:
        return set()
    if len(toks) < n:
        return {sep.join(toks)}
    return {sep.join(toks[i : i + n]) for i in range(len(toks) - n + 1)}


_pow_cache: dict[str, np.ndarray] = {}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P1^i and P1^-i mod 2^64 for i < n (grown and cached)."""
    if "pow" not in _pow_cache or len(_pow_cache["pow"]) < n:
        m = max(n + (n >> 1), 1 << 16)  # grow geometrically: tables are rebuilt rarely
        inv = pow(int(_P1), -1, 1 << 64)
        p = np.full(m, _P1, dtype=np.uint64)
        p[0] = 1
        q = np.full(m, np.uint64(inv), dtype=np.uint64)
        q[0] = 1
        _pow_cache["pow"], _pow_cache["inv"] = np.cumprod(p), np.cumprod(q)
    return _pow_cache["pow"][:n], _pow_cache["inv"][:n]


def _word_hashes(buf: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and start offsets of the words in a lowercased UTF-8 buffer."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    w = _WORD_BYTES[arr]
    edge = np.diff(w.astype(np.int8), prepend=0, append=0)
    starts = np.flatnonzero(edge == 1)
    ends = np.flatnonzero(edge == -1)
    pw, inv = _powers(arr.size)
    prefix = np.cumsum((arr.astype(np.uint64) + np.uint64(1)) * pw, dtype=np.uint64)
    prefix = np.concatenate([np.zeros(1, np.uint64), prefix])
    h = (prefix[ends] - prefix[starts]) * inv[starts]
    h = fmix64(h + ((ends - starts).astype(np.uint64) * _P2))
    return h, starts


def _roll(h: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n consecutive token hashes (order-sensitive)."""
    m = h.size - n + 1
    out = h[:m].copy()
    for k in range(1, n):
        out = out * _P2 + h[k : k + m]
    return fmix64(out)


def _doc_shingles_cjk(text: str, n: int) -> np.ndarray:
    cps = np.frombuffer(text.lower().encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cps = cps[~np.isin(cps, _SPACE_ARR)]
    if cps.size == 0:
        return np.zeros(0, np.uint64)
    h = fmix64(cps.astype(np.uint64) + _P1)
    if h.size < n:
        return _roll(h, h.size)
    return _roll(h, n)


def shingle_hashes(texts: list[str], n: int = NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes of a batch, grouped by document: (hashes uint64, per-document counts).

    Per-document Python work is a few C-level string calls on whole groups: ~GROUP_CHARS characters of
    documents are joined with NUL, lowercased and encoded once, and their tokens, shingles and document
    boundaries come from array operations over the group. Same hashes, in the same order, as
    `shingle_hashes_reference`.
    """
    texts = texts if isinstance(texts, list) else list(texts)
    ndocs = len(texts)
    counts = np.zeros(ndocs, dtype=np.int64)
    if ndocs == 0:
        return np.zeros(0, np.uint64), counts
    ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=ndocs) + 1)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (document indices, counts, hashes)
    i = 0
    while i < ndocs:
        base = int(ends[i - 1]) if i else 0
        j = max(int(np.searchsorted(ends, base + GROUP_CHARS, side="right")), i + 1)
        grp = texts[i:j]
        if j == i + 1 and len(grp[0]) > GROUP_CHARS:  # one huge document: chunked on its own
            t = grp[0]
            if is_cjk(t):
                h = _doc_shingles_cjk(t, n)
            else:
                h = _huge_doc(t.lower().encode("utf-8", "surrogatepass"), n)
            parts.append((np.array([i]), np.array([h.size]), h))
        else:
            nonascii = np.flatnonzero(~np.fromiter(map(str.isascii, grp), dtype=bool, count=len(grp))).tolist()
            # an ASCII document is never Chinese-like
            zh = [k for k, f in zip(nonascii, _cjk_flags([grp[k] for k in nonascii]).tolist()) if f] if nonascii else []
            if not zh:
                c, h = _spaced_batch(grp, n, nonascii)
                parts.append((np.arange(i, j), c, h))
            else:
                sel = np.zeros(len(grp), dtype=bool)
                sel[zh] = True
                sp = np.flatnonzero(~sel)
                if sp.size:
                    sub = [grp[k] for k in sp.tolist()]
                    c, h = _spaced_batch(sub, n, [k for k, t in enumerate(sub) if not t.isascii()])
                    parts.append((i + sp, c, h))
                c, h = _cjk_batch([grp[k] for k in zh], n)
                parts.append((i + np.array(zh), c, h))
        i = j
    if len(parts) == 1:
        counts[parts[0][0]] = parts[0][1]
        return parts[0][2], counts
    for idx, c, _ in parts:
        counts[idx] = c
    off = np.concatenate([[0], np.cumsum(counts)])
    hashes = np.empty(int(off[-1]), dtype=np.uint64)
    for idx, c, h in parts:  # scatter each part's per-document runs to their place in document order
        if h.size:
            local = np.concatenate([[0], np.cumsum(c)[:-1]])
            hashes[np.repeat(off[idx] - local, c) + np.arange(h.size)] = h
    return hashes, counts


_SPACE_RE = re.compile(r"\s")  # what `base.cjk_fraction` discounts
_CLASS_LUTS: list[np.ndarray] = []


def _class_luts() -> tuple[np.ndarray, np.ndarray]:
    """Per BMP code point: matches CJK_RE, matches \\s (built once from the regexes themselves)."""
    if not _CLASS_LUTS:
        bmp = "".join(map(chr, range(0x10000)))
        for rx in (CJK_RE, _SPACE_RE):
            lut = np.zeros(0x10000, dtype=bool)
            lut[[m.start() for m in rx.finditer(bmp)]] = True
            _CLASS_LUTS.append(lut)
    return _CLASS_LUTS[0], _CLASS_LUTS[1]


def _cjk_flags(texts: list[str], sample: int = 4000) -> np.ndarray:
    """`[is_cjk(t) for t in texts]` for many documents at once: CJK and whitespace characters of each
    document's first `sample` characters counted with lookup tables over one code-point array, and the
    same float comparison `cjk_fraction(t) >= 0.3`."""
    heads = [t[:sample] for t in texts]
    lens = np.fromiter(map(len, heads), dtype=np.int64, count=len(heads))
    cps = np.frombuffer("".join(heads).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cjk_lut, space_lut = _class_luts()
    bmp = np.minimum(cps, 0xFFFF)
    is_cjk_cp, is_space_cp = cjk_lut[bmp], space_lut[bmp]
    astral = np.flatnonzero(cps > 0xFFFF)
    if astral.size:  # outside the tables: ask the regexes, once per distinct character
        u, inv = np.unique(cps[astral], return_inverse=True)
        chars = [chr(int(c)) for c in u]
        is_cjk_cp[astral] = np.array([CJK_RE.match(c) is not None for c in chars])[inv]
        is_space_cp[astral] = np.array([_SPACE_RE.match(c) is not None for c in chars])[inv]
    ends = np.cumsum(lens)
    starts = ends - lens
    n_cjk = np.concatenate([[0], np.cumsum(is_cjk_cp)])
    n_cjk = n_cjk[ends] - n_cjk[starts]
    n_space = np.concatenate([[0], np.cumsum(is_space_cp)])
    n_space = n_space[ends] - n_space[starts]
    frac = n_cjk / np.maximum(lens - n_space, 1)
    return (n_cjk > 0) & (frac >= 0.3)


def _fmix64_(h: np.ndarray) -> np.ndarray:
    """`fmix64` in place (no temporaries beyond one shift buffer)."""
    t = np.right_shift(h, _S33)
    h ^= t
    h *= _M1
    np.right_shift(h, _S33, out=t)
    h ^= t
    h *= _M2
    np.right_shift(h, _S33, out=t)
    h ^= t
    return h


def _word_hashes_fast(buf: bytes) -> tuple[np.ndarray, np.ndarray]:
    """`_word_hashes` of a UTF-8 buffer that starts and ends with a non-word byte, in fewer, cheaper
    passes: the word mask and the ASCII lowercase come from C byte maps (`bytes.translate`,
    `bytes.lower`), then one edge scan and an in-place inclusive prefix sum. Returns the hashes and, per
    word, the offset of the byte before it."""
    mask = np.frombuffer(buf.translate(_WORD_TABLE), dtype=bool)
    edges = np.flatnonzero(mask[1:] != mask[:-1])  # e: mask[e] != mask[e + 1], alternating start, stop
    before = edges[0::2]  # word = buf[before + 1 : last + 1], last = edges[1::2]
    pw, inv = _powers(len(buf))
    prefix = np.add(np.frombuffer(buf.lower(), dtype=np.uint8), np.uint64(1), dtype=np.uint64)
    prefix *= pw
    np.cumsum(prefix, out=prefix)  # prefix[k] = sum of (byte + 1) * P1^i for i <= k
    at = prefix[edges]
    h = at[1::2] - at[0::2]
    h *= inv[1:][before]
    ln = np.subtract(edges[1::2], before).view(np.uint64)
    ln *= _P2
    h += ln
    return _fmix64_(h), before


def _spaced_batch(texts: list[str], n: int, nonascii: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Counts and shingle hashes of space-delimited documents; `nonascii`: the indices of those with
    non-ASCII characters. One buffer, NUL before, between and after the documents: ASCII runs are joined
    and copied as they are (`bytes.lower` in `_word_hashes_fast` folds their capitals), the others are
    lowercased with Unicode rules and encoded one by one, as the reference does."""
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    pieces, prev = [b""], 0
    for k in nonascii:
        if k > prev:
            pieces.append("\x00".join(texts[prev:k]).encode("ascii"))
        pieces.append(texts[k].lower().encode("utf-8", "surrogatepass"))
        lens[k] = len(pieces[-1])
        prev = k + 1
    if prev < len(texts):
        pieces.append("\x00".join(texts[prev:]).encode("ascii"))
    pieces.append(b"")
    buf = b"\x00".join(pieces)
    doc_start = np.ones(len(texts), dtype=np.int64)  # offsets in buf; buf[0] is the leading NUL
    np.cumsum(lens[:-1] + 1, out=doc_start[1:])
    doc_start[1:] += 1
    wh, before = _word_hashes_fast(buf)
    return _shingles_from_tokens(wh, np.searchsorted(before, doc_start - 1), n)


def _cjk_batch(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and character-shingle hashes of Chinese-like documents."""
    low = "\x00".join(texts).lower()  # NUL is neither cased nor case-ignorable: each document lowercases alone
    if low.count("\x00") != len(texts) - 1:  # a NUL is a token here: no safe separator, go one by one
        hs = [_doc_shingles_cjk(t, n) for t in texts]
        return np.array([h.size for h in hs], dtype=np.int64), np.concatenate(hs)
    cps = np.frombuffer(low.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    sep = cps == 0
    keep = ~(_SPACE_LUT[np.minimum(cps, _SPACE_LUT.size - 1)] | sep)
    before = np.cumsum(keep)  # tokens up to and including each position
    doc_start = np.concatenate([[0], before[sep]])
    th = cps[keep].astype(np.uint64)
    th += _P1
    return _shingles_from_tokens(_fmix64_(th), doc_start, n)


def _shingles_from_tokens(th: np.ndarray, doc_start: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-document counts and n-gram hashes from the token hashes of many documents (`doc_start`: the
    first token of each). A shingle is kept where no document starts inside it; a document with
    0 < tokens < n gets one shingle of all its tokens, as `_roll` gives."""
    total = th.size
    doc_end = np.append(doc_start[1:], total)
    nt = doc_end - doc_start
    counts = np.where(nt >= n, nt - n + 1, (nt > 0).astype(np.int64))
    if total == 0:
        return counts, np.zeros(0, np.uint64)
    pad = np.zeros(total + n - 1, dtype=np.uint64)
    pad[:total] = th
    sh = pad[:total].copy()
    for k in range(1, n):
        sh *= _P2
        sh += pad[k : k + total]
    _fmix64_(sh)
    valid = np.ones(total, dtype=bool)
    cross = (doc_end[:, None] - np.arange(1, n)).ravel()  # starts of shingles that run past a document
    valid[cross[cross >= 0]] = False
    short = np.flatnonzero((nt > 0) & (nt < n))
    if short.size:
        for length in np.unique(nt[short]):
            s = doc_start[short[nt[short] == length]]
            h = th[s]
            for k in range(1, int(length)):
                h = h * _P2 + th[s + k]
            sh[s] = fmix64(h)
            valid[s] = True
    return counts, sh[valid]


def shingle_hashes_reference(texts: list[str], n: int = NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """The simple path, kept as the reference of `shingle_hashes` (tests pin them equal): each document
    lowercased and encoded on its own, Chinese-like documents hashed one by one."""
    counts = np.zeros(len(texts), dtype=np.int64)
    parts: list[tuple[int, np.ndarray]] = []
    spaced = [i for i, t in enumerate(texts) if not is_cjk(t)]
    spaced_set = set(spaced)
    for i, t in enumerate(texts):
        if i not in spaced_set:
            parts.append((i, _doc_shingles_cjk(t, n)))
    # spaced documents: one buffer per ~1 MB (cache-sized), NUL-separated so no word spans two documents
    lim = 1 << 20
    j = 0
    while j < len(spaced):
        group, size = [], 0
        while j < len(spaced) and (not group or size < lim):
            enc = texts[spaced[j]].lower().encode("utf-8", "surrogatepass")
            if len(enc) > lim:  # a huge document: hash its words chunk by chunk, cut at spaces
                if group:
                    break
                parts.append((spaced[j], _huge_doc(enc, n)))
                j += 1
                continue
            group.append((spaced[j], enc))
            size += len(enc) + 1
            j += 1
        if group:
            parts.extend(_spaced_group(group, n))
    parts.sort(key=lambda p: p[0])
    for i, h in parts:
        counts[i] = h.size
    hashes = np.concatenate([h for _, h in parts]) if parts else np.zeros(0, np.uint64)
    return hashes, counts


def _spaced_group(group: list[tuple[int, bytes]], n: int) -> list[tuple[int, np.ndarray]]:
    buf = b"\x00".join(e for _, e in group)
    lens = np.array([len(e) + 1 for _, e in group], dtype=np.int64)
    doc_start = np.concatenate([[0], np.cumsum(lens)[:-1]])
    wh, ws = _word_hashes(buf)
    wdoc = np.searchsorted(doc_start, ws, side="right") - 1
    nw = np.bincount(wdoc, minlength=len(group))
    out: list[tuple[int, np.ndarray]] = []
    if wh.size >= n:
        sh = _roll(wh, n)
        sdoc = wdoc[: sh.size]
        ok = sdoc == wdoc[n - 1 :]
        sh, sdoc = sh[ok], sdoc[ok]
        bounds = np.searchsorted(sdoc, np.arange(len(group) + 1))
    else:
        sh, bounds = np.zeros(0, np.uint64), np.zeros(len(group) + 1, dtype=np.int64)
    wbounds = np.searchsorted(wdoc, np.arange(len(group) + 1))
    for k, (i, _) in enumerate(group):
        if 0 < nw[k] < n:
            out.append((i, _roll(wh[wbounds[k] : wbounds[k + 1]], int(nw[k]))))
        else:
            out.append((i, sh[bounds[k] : bounds[k + 1]]))
    return out


def _huge_doc(enc: bytes, n: int) -> np.ndarray:
    hs, pos, lim = [], 0, 1 << 20
    while pos < len(enc):
        end = min(pos + lim, len(enc))
        if end < len(enc):
            cut = enc.rfind(b" ", pos, end)
            end = cut + 1 if cut > pos else end
        hs.append(_word_hashes(enc[pos:end])[0])
        pos = end
    wh = np.concatenate(hs)
    if wh.size == 0:
        return wh
    return _roll(wh, min(n, wh.size))
