"""MinHash dedup holds signatures, never texts, and shards them to disk: a corpus whose text is several
times larger than the memory the dedup process may use still deduplicates correctly.

A child process streams ~0.5 GB of generated text (documents made one at a time, never kept) through
two shard collectors of `MinHashDedup`, reduces, and streams the apply pass, under an address-space
limit (RLIMIT_AS) of 128 MB above what it had mapped after its imports; its peak RSS (VmHWM) is
reported and bounded too.
Holding the texts would need the whole 0.5 GB, so the run would die of MemoryError. The planted near
duplicates must be exactly the documents removed, each in favour of its newer copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, resource, sys
from pathlib import Path

import numpy as np

from ilm.data.dedup import MinHashDedup
from ilm.data.document import Document

work, n_docs, doc_bytes, headroom = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
PLANTED = list(range(7, n_docs, 97))  # documents that get a near copy (2 words of ~40,000 changed), newer


def text(i):
    # random 11-letter words: two different documents share no 5-gram
    b = np.random.default_rng(i).integers(97, 123, doc_bytes, dtype=np.uint8)
    b[11::12] = 32
    return b.tobytes().decode("ascii")


def stream():
    for i in range(n_docs):
        yield Document(id=f"d{i:05d}", text=text(i), timestamp=float(i))
    for k, i in enumerate(PLANTED):
        t = text(i)
        yield Document(id=f"c{i:05d}", text="edited " + t[12:1200] + " edited " + t[1212:], timestamp=float(n_docs + k))


def vm_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])


class Ctx:
    def __init__(self, shard):
        self.shard, self.work_dir, self.dropped = shard, work, []

    def drop(self, doc, reason, **detail):
        self.dropped.append((doc.id, detail["duplicate_of"]))

    def count(self, key, n=1):
        pass


import pyarrow as pa
import pyarrow.parquet as pq

pq.write_table(pa.table({"x": [1]}), work / "warm.parquet")  # libraries and thread pools mapped before
pq.read_table(work / "warm.parquet")  # the limit is measured
step = MinHashDedup()
base_vm, base_rss = vm_kb("VmSize:"), vm_kb("VmRSS:")
limit = (base_vm + headroom * 1024) * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
cols = [step.collector(work, s) for s in range(2)]
total = 0
for n, d in enumerate(stream()):
    cols[n % 2].add(d)
    total += len(d.text)
for c in cols:
    c.close()
stats = step.reduce(work, 2)
kept, dropped = 0, []
for s in range(2):
    ctx = Ctx(s)
    kept += sum(1 for _ in step.run((d for n, d in enumerate(stream()) if n % 2 == s), ctx))
    dropped += ctx.dropped
try:  # the limit is real: holding the text would not fit
    hold = bytearray(total)
    fits = True
except MemoryError:
    fits = False
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec
print(json.dumps({"text_bytes": total, "peak_rss_kb": vm_kb("VmHWM:"),
                  "base_rss_kb": base_rss, "limit_bytes": limit - base_vm * 1024, "kept": kept, "dropped": sorted(dropped),
                  "planted": PLANTED, "text_fits": fits, "stats": stats}))
"""


def test_minhash_dedup_corpus_larger_than_memory(tmp_path: Path) -> None:
    n_docs, doc_bytes, headroom_mb = 1100, 480_000, 128
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), str(n_docs), str(doc_bytes), str(headroom_mb)],
                          check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    text_mb, peak_mb = r["text_bytes"] / 2**20, r["peak_rss_kb"] / 1024
    print(f"text {text_mb:.0f} MB, address-space headroom {r['limit_bytes'] / 2**20:.0f} MB, "
          f"peak RSS {peak_mb:.0f} MB (after imports {r['base_rss_kb'] / 1024:.0f} MB)")
    assert not r["text_fits"]  # the text could not even be held once under the limit
    assert text_mb > 3 * r["limit_bytes"] / 2**20 and text_mb > 2 * peak_mb  # peak RSS includes the libraries
    assert r["dropped"] == sorted([f"d{i:05d}", f"c{i:05d}"] for i in r["planted"])
    assert r["kept"] == n_docs
    assert r["stats"]["clusters"] == len(r["planted"]) and r["stats"]["removed"] == len(r["planted"])
