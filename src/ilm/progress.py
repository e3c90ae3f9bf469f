"""Progress for long commands: a tqdm bar on a terminal, plain lines every so often anywhere else.

A bar's carriage returns turn a log file into hundreds of overwritten updates; when stderr is not a terminal
(a log, a pipe, a batch job) `progress_bar` returns `PlainProgress` instead, which prints one ordinary line
every `ILM_PROGRESS_SECONDS` seconds (default 30) and one at the end. Both take the same calls (update,
set_postfix, set_postfix_str, close), so callers never ask which one they have.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def progress_bar(total: int | None, desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True,
                 unit_scale: bool = False, leave: bool = True, stream: TextIO | None = None) -> Any:
    """tqdm on a terminal, `PlainProgress` otherwise, a do-nothing bar when not `enabled`."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return PlainProgress(total, desc, unit, initial, unit_scale, stream, enabled=False)
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc or None, unit=unit, initial=initial, unit_scale=unit_scale,
                    unit_divisor=1000, leave=leave, dynamic_ncols=True, file=stream)
    return PlainProgress(total, desc, unit, initial, unit_scale, stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """Periodic plain lines: `desc: 120/600 step (20%), 3.1 step/s, 2:05 left, loss=3.21`."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 unit_scale: bool = False, stream: TextIO | None = None, enabled: bool = True,
                 seconds: float | None = None):
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self.start = initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.seconds = seconds if seconds is not None else float(os.environ.get("ILM_PROGRESS_SECONDS", "30"))
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.enabled and now - self.last >= self.seconds:
            self.last = now
            self._print()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.enabled and not self.closed and self.n > self.start:
            self._print()
        self.closed = True

    def _amount(self, x: float) -> str:
        if not self.unit_scale:
            return f"{x:,.0f}"
        from tqdm import tqdm

        return tqdm.format_sizeof(x, divisor=1000)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.n - self.start) / elapsed
        parts = [f"{self._amount(self.n)}" + (f"/{self._amount(self.total)}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{self._amount(rate)} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            from tqdm import tqdm

            parts.append(f"{tqdm.format_interval((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)
