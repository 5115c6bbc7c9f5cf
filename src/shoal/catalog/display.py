"""What a person watching a build sees: a line per model as it starts and finishes, and a summary
table at the end (model, status, parity, size, time).

Called by build.py. `PlainProgress` prints lines, for CI logs and pipes. `LiveProgress` shows a
live table with elapsed times through rich, only on a terminal and never when CI is set
(`choose_progress`). The summary renders as plain text, and as Markdown for CI summaries
(`--summary FILE`, e.g. $GITHUB_STEP_SUMMARY).
"""

from __future__ import annotations

import os
import time
from typing import TextIO

from shoal.catalog.execution import ModelResult, Status
from shoal.fleet.placement import format_size
from shoal.manifest import Manifest

SUMMARY_COLUMNS = ("model", "status", "parity", "size", "time", "note")


def format_parity(manifest: Manifest | None) -> str:
    """The parity of the served dtype: worst figure against its threshold."""
    if manifest is None or not manifest.parity:
        return "-"
    results = [p for p in manifest.parity if p.dtype == manifest.dtype] or manifest.parity
    # The least favourable result: lowest cosine, or largest difference.
    worst = min(results, key=lambda p: p.value if p.metric == "min_cosine" else -p.value)
    if worst.metric == "min_cosine":
        figure = f"cos {worst.value:.7f}"
    else:
        figure = f"{worst.metric.replace('_', ' ')} {worst.value:.2e}"
    mark = "ok" if all(p.passed for p in results) else "FAILED"
    return f"{worst.dtype} {figure} {mark}"


def summary_rows(results: list[ModelResult]) -> list[tuple[str, ...]]:
    rows = []
    for result in results:
        manifest = result.manifest
        size = format_size(manifest.weights_bytes) if manifest else "-"
        elapsed = f"{result.elapsed_s:.1f} s" if result.status is Status.BUILT else "-"
        if result.status is Status.FAILED:
            elapsed = f"{result.elapsed_s:.1f} s" if result.elapsed_s else "-"
        note = result.reason.splitlines()[0] if result.reason else ""
        rows.append(
            (result.name, result.status.value, format_parity(manifest), size, elapsed, note)
        )
    return rows


def summary_counts(results: list[ModelResult]) -> str:
    counts = {s: sum(r.status is s for r in results) for s in Status}
    return ", ".join(f"{counts[s]} {s.value}" for s in Status)


def render_summary(results: list[ModelResult], note_width: int = 80) -> str:
    rows = [
        (*row[:-1], row[-1] if len(row[-1]) <= note_width else row[-1][: note_width - 3] + "...")
        for row in summary_rows(results)
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(SUMMARY_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(SUMMARY_COLUMNS, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(summary_counts(results))
    failures = [r for r in results if r.status is Status.FAILED]
    if failures:  # the table cuts notes short; a failure's whole message is what to act on
        lines += ["", "failures:"] + [
            f"  {r.name}: " + r.reason.replace("\n", "\n    ") for r in failures
        ]
    return "\n".join(lines) + "\n"


def render_markdown_summary(results: list[ModelResult], catalog: str) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"### shoal build {catalog}: {summary_counts(results)}", ""]
    lines.append("| " + " | ".join(SUMMARY_COLUMNS) + " |")
    lines.append("|" + "---|" * len(SUMMARY_COLUMNS))
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in summary_rows(results)]
    return "\n".join(lines) + "\n"


def _finish_line(result: ModelResult) -> str:
    if result.status is Status.BUILT:
        assert result.manifest is not None
        return (
            f"built {result.name} in {result.elapsed_s:.1f} s "
            f"({format_parity(result.manifest)}, {format_size(result.manifest.weights_bytes)})"
        )
    if result.status is Status.SKIPPED:
        return f"skipped {result.name} ({result.reason})"
    took = f" after {result.elapsed_s:.1f} s" if result.elapsed_s else ""
    return f"FAILED {result.name}{took}: {result.reason}"


class PlainProgress:
    """One timestamped line per event: readable in CI logs, greppable."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started_at = time.monotonic()

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started_at
        self.stream.write(f"[{elapsed:7.1f} s] {text}\n")
        self.stream.flush()

    def planned(self, counts: str) -> None:
        self._line(f"plan: {counts}")

    def started(self, name: str, reason: str, running: int, remaining: int) -> None:
        self._line(f"exporting {name} ({reason}); {running} running, {remaining} waiting")

    def finished(self, result: ModelResult) -> None:
        self._line(_finish_line(result))

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


class LiveProgress(PlainProgress):
    """A live table (rich) of the models being exported, above the plain lines."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.running: dict[str, float] = {}
        self.live = Live(self._table(), console=self.console, refresh_per_second=2, transient=True)
        self.live.start()

    def _table(self):  # noqa: ANN202 - a rich Table
        from rich.table import Table

        table = Table(title="exporting", show_edge=False)
        table.add_column("model")
        table.add_column("elapsed", justify="right")
        now = time.monotonic()
        for name, since in self.running.items():
            table.add_row(name, f"{now - since:.0f} s")
        return table

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started_at
        self.console.print(f"[{elapsed:7.1f} s] {text}", markup=False, highlight=False)

    def started(self, name: str, reason: str, running: int, remaining: int) -> None:
        self.running[name] = time.monotonic()
        super().started(name, reason, running, remaining)
        self.tick()

    def finished(self, result: ModelResult) -> None:
        self.running.pop(result.name, None)
        super().finished(result)
        self.tick()

    def tick(self) -> None:
        self.live.update(self._table())

    def close(self) -> None:
        self.live.stop()


def choose_progress(stream: TextIO, live: bool | None = None) -> PlainProgress:
    """Live on a terminal outside CI, plain otherwise (or as `live` says)."""
    if live is None:
        live = stream.isatty() and not os.environ.get("CI")
    return LiveProgress(stream) if live else PlainProgress(stream)
