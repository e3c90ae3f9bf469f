"""The same pipeline on a Ray cluster (`pip install 'ilm[ray]'`): one Ray task per shard and pass.

Shard work, markers and the ledger are the local executor's (process_shard); only task dispatch
differs, so both executors keep the same documents. Reduces run on the driver. Output and input paths
must be on storage every node sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ilm.data.executor import Executor, _Bar, process_shard


@dataclass
class RayExecutor(Executor):
    """`address` = None starts (or joins) a local Ray with `workers` CPUs; 'auto' joins a running cluster."""

    address: str | None = None

    def _run_tasks(self, tasks: list[dict[str, Any]], desc: str) -> list[dict[str, Any]]:
        import os

        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=None if self.address else max(self.workers, 1),
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        remote = ray.remote(num_cpus=1, max_retries=0)(process_shard)
        sizes = {id(t): os.path.getsize(t["input"]) if os.path.exists(t["input"]) else 0 for t in tasks}
        bar = _Bar(sum(sizes.values()), desc + " (ray)", self.progress)
        pending = {remote.remote(t): t for t in tasks}
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                t = pending.pop(ref)
                r = ray.get(ref)
                results.append(r)
                bar.update(r.get("docs_in", 0), sizes[id(t)])
        bar.close()
        return results
