"""Runs a pipeline over input shards: local worker processes (or Ray), resume markers, and the ledger.

Layout of an output folder:
  plan.json                    inputs and steps; a rerun must match it (resume) or use a new folder
  kept/shard-XXXXX.<fmt>       the kept documents (last pass)
  removed/sK-shard-XXXXX.<fmt> every dropped document, metadata.removed = {step, reason, ...}
  stages/sK/...                intermediate kept documents between passes (deleted at the end)
  global/<step>/...            dedup signatures and decisions; _reduced.json marks a finished reduce
  markers/sK/shard-XXXXX.json  written last, after a shard's files are renamed into place: its ledger
  ledger.json                  the funnel: documents and bytes into each step, removed per reason
  timings.json                 seconds per pass and reduce of this invocation

Every state file above (plan, markers, _reduced.json, ledger, timings) and every shard is written to a
temporary sibling, fsynced and renamed into place. On a rerun a state file that cannot be read counts as
absent (with a notice on stderr): its shard or reduce is redone, together with whatever earlier pass
that shard needs as input once a finished run has deleted stages/.

The pipeline is cut into passes at each GlobalStep (dedup): pass K runs the previous global step's
decisions and the per-document steps that follow, writes its kept documents and feeds the next global
step's collector. A shard whose marker exists is never redone; a shard without one is redone from its
input and overwrites any partial files, so a killed run, rerun, ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilm.data.base import GlobalStep, Step
from ilm.data.document import Document
from ilm.data.io import InputError, ShardWriter, atomic_write_text, list_inputs, read_documents


class PipelineError(RuntimeError):
    """One or more shards failed; the message names each input file and its error."""


class LedgerError(RuntimeError):
    """A step lost or invented documents (in != kept + removed): a bug in that step."""


def read_state(path: Path) -> Any:
    """A state file (plan, marker, reduce result) as JSON, or None when it is absent or unreadable. Every
    state file is written atomically, so an unreadable one comes from elsewhere (a copy cut short, a
    disk error): its step is treated as not done and redone, with a one-line notice on stderr."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        reason = "empty" if path.exists() and path.stat().st_size == 0 else type(exc).__name__
        print(f"ilm data: {path} is unreadable ({reason}); treating that step as not done and redoing it", file=sys.stderr)
        return None


def _nbytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@dataclass
class Segment:
    """One pass over the shards: apply a global step's decisions, run steps, feed the next collector."""

    index: int
    steps: list[Step]
    collect: GlobalStep | None = None


def segments(steps: list[Step]) -> list[Segment]:
    out: list[Segment] = []
    cur: list[Step] = []
    for s in steps:
        if isinstance(s, GlobalStep):
            out.append(Segment(len(out), cur, s))
            cur = [s]
        else:
            cur.append(s)
    out.append(Segment(len(out), cur, None))
    return out


def unique_labels(steps: list[Step]) -> list[Step]:
    """Give every step a distinct ledger name (type, then type_2, ...)."""
    seen: dict[str, int] = {}
    for s in steps:
        base = s.label()
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            s.name = f"{base}_{seen[base]}"
    return steps


class _ShardContext:
    """The Context a step sees; drops go to the shard's removed writer and the ledger counts."""

    def __init__(self, shard: int, removed_path: Path, ledger: dict[str, Any]):
        self.shard = shard
        self.work_dir = Path(".")
        self.removed_path = removed_path
        self.ledger = ledger
        self.step = "read"
        self._writer: ShardWriter | None = None

    def for_step(self, label: str, work_dir: Path) -> _ShardContext:
        c = _ShardContext.__new__(_ShardContext)
        c.__dict__.update(self.__dict__)
        c.step, c.work_dir, c._parent = label, work_dir, self
        return c

    def _root(self) -> _ShardContext:
        return self.__dict__.get("_parent", self)

    def drop(self, doc: Document, reason: str, **detail: Any) -> None:
        root = self._root()
        if root._writer is None:
            root._writer = ShardWriter(root.removed_path)
        doc.metadata["removed"] = {"step": self.step, "reason": reason, **detail}
        root._writer.write(doc)
        st = self.ledger["steps"][self.step]
        st["removed"][reason] = st["removed"].get(reason, 0) + 1
        st["removed_docs"] += 1
        st["removed_bytes"] += _nbytes(doc.text)

    def count(self, key: str, n: int = 1) -> None:
        c = self.ledger["counters"]
        c[key] = c.get(key, 0) + n

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


def _new_step_ledger() -> dict[str, Any]:
    return {"docs_in": 0, "bytes_in": 0, "removed_docs": 0, "removed_bytes": 0, "removed": {}}


def _meter(it: Iterator[Document], st: dict[str, Any]) -> Iterator[Document]:
    for d in it:
        st["docs_in"] += 1
        st["bytes_in"] += _nbytes(d.text)
        yield d


_PROGRESS: Any = None


def _init_worker(queue: Any) -> None:
    global _PROGRESS
    _PROGRESS = queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers


def process_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Run one pass over one shard; returns its ledger (or {'error': ...}). Safe to call anywhere."""
    seg: Segment = task["segment"]
    shard: int = task["shard"]
    out_path, removed_path, marker = Path(task["out"]), Path(task["removed"]), Path(task["marker"])
    ledger: dict[str, Any] = {"shard": shard, "input": task["input"], "steps": {}, "counters": {}}
    ctx = _ShardContext(shard, removed_path, ledger)
    writer: ShardWriter | None = None
    queue = _PROGRESS
    pending = [0, 0, time.monotonic()]

    def progress(nbytes: int) -> None:
        pending[1] += nbytes
        if queue is not None and time.monotonic() - pending[2] > 0.2:
            queue.put((pending[0], pending[1]))
            pending[0] = pending[1] = 0
            pending[2] = time.monotonic()

    try:
        if seg.index == 0:
            ledger["steps"]["read"] = read_st = _new_step_ledger()
            src = read_documents(task["input"], ctx.drop, ledger["counters"], progress, task["on_invalid_utf8"])
        else:
            src = read_documents(task["input"], progress=progress)
        src_st = _new_step_ledger()
        it: Iterator[Document] = _meter(src, src_st)
        for step in seg.steps:
            st = ledger["steps"][step.label()] = _new_step_ledger()
            it = step.run(_meter(it, st), ctx.for_step(step.label(), Path(task["global_dirs"].get(step.label(), "."))))
        writer = ShardWriter(out_path)
        collector = None
        if seg.collect is not None:
            gdir = Path(task["global_dirs"][seg.collect.label()])
            gdir.mkdir(parents=True, exist_ok=True)
            collector = seg.collect.collector(gdir, shard)
        kept = kept_bytes = 0
        for doc in it:
            writer.write(doc)
            if collector is not None:
                collector.add(doc)
            kept += 1
            kept_bytes += _nbytes(doc.text)
            pending[0] += 1
            if pending[0] >= 1024:
                progress(0)
        if seg.index == 0:  # records the reader saw: those it yielded plus those it quarantined
            read_st["docs_in"] = src_st["docs_in"] + read_st["removed_docs"]
            read_st["bytes_in"] = src_st["bytes_in"] + read_st["removed_bytes"]
            ledger["docs_in"] = read_st["docs_in"]
        else:
            ledger["docs_in"] = src_st["docs_in"]
        ledger["kept_docs"], ledger["kept_bytes"] = kept, kept_bytes
        removed = sum(s["removed_docs"] for s in ledger["steps"].values())
        if ledger["docs_in"] != kept + removed:
            raise LedgerError(f"shard {shard}: {ledger['docs_in']} documents in, {kept} kept + {removed} removed")
        writer.close()
        ctx.close()
        if collector is not None:
            collector.close()
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps(ledger, sort_keys=True))
        if queue is not None:
            queue.put((pending[0], pending[1]))
        return ledger
    except Exception as exc:  # noqa: BLE001 - reported per shard, the other shards go on
        if writer is not None:
            writer.abort()
        ctx.abort()
        msg = str(exc) if isinstance(exc, (InputError, LedgerError)) else f"{task['input']}: {type(exc).__name__}: {exc}"
        return {"error": msg, "shard": shard}


@dataclass
class Executor:
    """The local executor: `workers` processes over input shards (1 = in this process)."""

    workers: int = 1
    output_format: str = "jsonl.zst"
    on_invalid_utf8: str = "replace"  # or "quarantine"
    keep_intermediate: bool = False
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, steps: list[Step], inputs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
        """Run (or resume) the pipeline; returns the ledger (also written to out_dir/ledger.json)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_output(out)  # held until this run returns (or its process ends)
        files = list_inputs(list(inputs))
        steps = unique_labels(list(steps))
        self._check_plan(out, files, steps)
        segs = segments(steps)
        gdirs = {s.label(): str(out / "global" / s.label()) for s in steps if isinstance(s, GlobalStep)}
        ledgers: list[list[dict[str, Any]]] = []
        reduced: dict[str, Any] = {}
        t_all = time.perf_counter()
        stage = lambda k, i: out / "stages" / f"s{k}" / f"shard-{i:05d}.jsonl.zst"
        marker = lambda k, i: out / "markers" / f"s{k}" / f"shard-{i:05d}.json"
        done = [{i: m for i in range(len(files)) if (m := read_state(marker(k, i))) is not None} for k in range(len(segs))]
        for k in range(len(segs) - 1, 0, -1):  # a shard redone in pass k needs its input from pass k - 1
            for i in range(len(files)):
                if i not in done[k] and not stage(k - 1, i).exists():
                    done[k - 1].pop(i, None)  # (finished runs delete stages/: redo that shard from the start)
        for seg in segs:
            last = seg.index == len(segs) - 1
            tasks = []
            for i, f in enumerate(files):
                if i in done[seg.index]:
                    continue
                src = str(f) if seg.index == 0 else str(stage(seg.index - 1, i))
                dst = out / "kept" / f"shard-{i:05d}.{self.output_format}" if last else stage(seg.index, i)
                tasks.append({
                    "segment": seg, "shard": i, "input": src, "out": str(dst), "marker": str(marker(seg.index, i)),
                    "removed": str(out / "removed" / f"s{seg.index}-shard-{i:05d}.{self.output_format}"),
                    "global_dirs": gdirs, "on_invalid_utf8": self.on_invalid_utf8,
                })
            t0 = time.perf_counter()
            results = self._run_tasks(tasks, f"pass {seg.index + 1}/{len(segs)}") if tasks else []
            self.timings[f"pass{seg.index}"] = time.perf_counter() - t0
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                raise PipelineError(f"{len(errors)} shard(s) failed (the others are done and will be skipped on rerun):\n  " + "\n  ".join(errors))
            ledgers.append(sorted(list(done[seg.index].values()) + results, key=lambda r: r["shard"]))
            if seg.collect is not None:
                g = seg.collect
                gdir = Path(gdirs[g.label()])
                gdir.mkdir(parents=True, exist_ok=True)
                mark = gdir / "_reduced.json"
                got = None if tasks else read_state(mark)  # a shard redone feeds the reduce again
                if got is not None:
                    reduced[g.label()] = got
                else:
                    t0 = time.perf_counter()
                    reduced[g.label()] = g.reduce(gdir, len(files))
                    self.timings[f"reduce:{g.label()}"] = time.perf_counter() - t0
                    atomic_write_text(mark, json.dumps(reduced[g.label()], sort_keys=True))
        self.timings["total"] = time.perf_counter() - t_all
        ledger = aggregate(ledgers, steps, reduced, files)
        atomic_write_text(out / "ledger.json", json.dumps(ledger, indent=1, sort_keys=True))
        atomic_write_text(out / "timings.json", json.dumps(self.timings, indent=1))
        if not self.keep_intermediate:
            shutil.rmtree(out / "stages", ignore_errors=True)
        lock.close()
        return ledger

    def _check_plan(self, out: Path, files: list[Path], steps: list[Step]) -> None:
        plan = {
            "inputs": [str(f.resolve()) for f in files],
            "steps": [{"type": s.type, **_params(s)} for s in steps],
            "output_format": self.output_format,
            "on_invalid_utf8": self.on_invalid_utf8,
        }
        path = out / "plan.json"
        old = read_state(path)
        if old is not None:
            if old != json.loads(json.dumps(plan)):
                raise PipelineError(f"{out} holds a run of a different plan (inputs or steps changed); use a new output folder")
        else:
            atomic_write_text(path, json.dumps(plan, indent=1))

    def _run_tasks(self, tasks: list[dict[str, Any]], desc: str) -> list[dict[str, Any]]:
        total = sum(os.path.getsize(t["input"]) for t in tasks if os.path.exists(t["input"]))
        bar = _Bar(total, desc, self.progress)
        if self.workers <= 1:
            results = []
            for t in tasks:
                results.append(process_shard(t))
                bar.update(results[-1].get("docs_in", 0), os.path.getsize(t["input"]) if os.path.exists(t["input"]) else 0)
            bar.close()
            return results
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        results = []
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(queue,)) as pool:
            futs = {pool.submit(process_shard, t) for t in tasks}
            try:
                while futs:
                    finished, futs = wait(futs, timeout=0.25, return_when=FIRST_COMPLETED)
                    results.extend(f.result() for f in finished)
                    bar.drain(queue)
            except KeyboardInterrupt:  # finished shards keep their markers; the ones in progress are redone
                workers = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                for proc in workers:
                    proc.terminate()
                raise
        bar.drain(queue)
        bar.close()
        return results


def lock_output(out: Path) -> Any:
    """An exclusive lock on OUT/.lock: a second run on the same output folder fails at once, instead of both
    runs renaming each other's temporary files away. Released when the returned file is closed."""
    import fcntl

    f = open(out / ".lock", "a+")  # noqa: SIM115 - the caller holds it for the run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise PipelineError(f"{out} is in use by another `ilm data run`{f' (pid {holder})' if holder else ''}; "
                            "wait for it to finish or use another output folder") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def _params(step: Step) -> dict[str, Any]:
    return {f.name: getattr(step, f.name) for f in dataclasses.fields(step)}


class _Bar:
    """A bar over input bytes (MB/s and ETA) with documents/s as a postfix (plain lines when not a terminal)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        from ilm.progress import progress_bar

        self.t0 = time.monotonic()
        self.docs = 0
        self.bar = progress_bar(total, desc=desc, unit="B", unit_scale=True, enabled=enabled, leave=False)

    def update(self, docs: int, nbytes: int) -> None:
        self.docs += docs
        self.bar.update(nbytes)
        self.bar.set_postfix_str(f"{self.docs / max(time.monotonic() - self.t0, 1e-9):,.0f} docs/s", refresh=False)

    def drain(self, queue: Any) -> None:
        import queue as q

        while True:
            try:
                d, b = queue.get_nowait()
            except (q.Empty, OSError, ValueError):
                return
            self.update(d, b)

    def close(self) -> None:
        self.bar.close()


def aggregate(ledgers: list[list[dict[str, Any]]], steps: list[Step], reduced: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    """Sum shard ledgers into the funnel: one row per step in pipeline order."""
    order = ["read"] + [s.label() for s in steps]
    rows: dict[str, dict[str, Any]] = {k: _new_step_ledger() for k in order}
    counters: dict[str, int] = {}
    for seg_ledgers in ledgers:
        for led in seg_ledgers:
            for k, st in led["steps"].items():
                r = rows[k]
                for f in ("docs_in", "bytes_in", "removed_docs", "removed_bytes"):
                    r[f] += st[f]
                for reason, n in st["removed"].items():
                    r["removed"][reason] = r["removed"].get(reason, 0) + n
            for k, n in led["counters"].items():
                counters[k] = counters.get(k, 0) + n
    last = ledgers[-1] if ledgers else []
    kept = sum(x["kept_docs"] for x in last)
    kept_bytes = sum(x["kept_bytes"] for x in last)
    types = {"read": "read", **{s.label(): s.type for s in steps}}
    funnel = [{"step": k, "type": types[k], **{f: rows[k][f] for f in ("docs_in", "bytes_in", "removed_docs", "removed_bytes")},
               "reasons": dict(sorted(rows[k]["removed"].items()))} for k in order]
    input_docs = rows["read"]["docs_in"]
    removed = sum(r["removed_docs"] for r in rows.values())
    return {
        "input_docs": input_docs,
        "input_bytes": rows["read"]["bytes_in"],
        "kept_docs": kept,
        "kept_bytes": kept_bytes,
        "removed_docs": removed,
        "balanced": input_docs == kept + removed,
        "shards": len(files),
        "funnel": funnel,
        "counters": dict(sorted(counters.items())),
        "global": reduced,
    }
