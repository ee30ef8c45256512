"""Reconciliation as text: the table ``meterapi usage reconcile`` prints, and its progress."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Never, TextIO

from tqdm import tqdm

from meterapi.metering.reconcile import Drift

COLUMNS = ("customer_id", "ledger", "pending", "stripe", "drift", "window")


def table(rows: Sequence[Drift], *, drift_only: bool = False) -> str:
    """One line per customer; a drifting one is marked ``<< DRIFT``."""
    shown = [r for r in rows if r.drift] if drift_only else list(rows)
    lines = [
        (
            r.customer_id,
            str(r.ledger_units),
            str(r.pending_units),
            str(r.stripe_units),
            f"{r.drift:+d}" if r.drift else "0",
            f"{r.start:%Y-%m-%dT%H:%MZ}..{r.end:%Y-%m-%dT%H:%MZ}",
        )
        for r in shown
    ]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(COLUMNS)]

    def render(cells: Sequence[str], mark: str = "") -> str:
        left = cells[0].ljust(widths[0])
        numbers = [c.rjust(w) for c, w in zip(cells[1:5], widths[1:5], strict=True)]
        return "  ".join([left, *numbers, cells[5]]) + mark

    out = [render(COLUMNS)]
    out += [
        render(line, "  << DRIFT" if r.drift else "") for line, r in zip(lines, shown, strict=True)
    ]
    return "\n".join(out)


class Progress:
    """A progress bar when ``stream`` is a terminal; otherwise a line every tenth of the way."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._bar: tqdm[Never] | None = None
        self._next_line = 0.1

    def update(self, done: int, total: int) -> None:
        if self._tty:
            bar = self._bar
            if bar is None:
                bar = self._bar = tqdm(total=total, unit="customer", file=self._stream, leave=False)
            bar.update(done - bar.n)
            return
        if done == total or done / total >= self._next_line:
            print(f"reconciled {done}/{total} customers", file=self._stream, flush=True)
            while self._next_line <= done / total:
                self._next_line += 0.1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
