"""Everything Rich: human output on stderr, live when stderr is a terminal, plain lines otherwise.

stdout is never written here: it belongs to generated text. `discard_further_output` is
here too, for any stream whose reader has gone (stdout of `sample | head` as well as stderr).
"""

from __future__ import annotations

import math
import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from charrnn import events

PLAIN_LOG_INTERVAL_SECONDS = 10.0


def terminal_safe(text: object) -> str:
    """Text from a file (a checkpoint's metadata, a path, a run's name) made safe to print.

    Every character a terminal would act on instead of showing (ESC and the other control
    characters, bidirectional overrides, line separators; whatever `str.isprintable` refuses
    but the space) is written as its Python escape, e.g. \\x1b: a corpus name holding
    `ESC ] 0 ;` must not retitle the terminal, nor a name hide what follows it.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char == " " else repr(char)[1:-1] for char in text)


def discard_further_output(stream) -> None:
    """Point a stream whose reader has gone at /dev/null, so later writes (and the interpreter's
    final flush) neither fail nor complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class StderrConsole(Console):
    """Rich's console on stderr, for which a reader that goes away (`train ... 2>&1 | head`) ends
    the output, not the command: Rich's own handling exits at once, which would kill a training
    run between checkpoints. `reader_gone` tells the command, which then saves and ends."""

    reader_gone = False

    def on_broken_pipe(self) -> None:
        self.reader_gone = True
        self.quiet = True  # nothing more is written
        discard_further_output(sys.stderr)


def stderr_console(quiet: bool = False) -> StderrConsole:
    """The one console for progress, notices and errors (`quiet`: prints nothing, e.g. torchrun ranks > 0)."""
    # emoji=False: generated text such as ":X:" must not turn into an emoji in the preview.
    return StderrConsole(stderr=True, highlight=False, soft_wrap=True, quiet=quiet, emoji=False)


class CorpusProgressDisplay:
    """Shows the streaming passes over a corpus once they take more than a moment.

    On a terminal: a transient Rich progress bar (MB done, MB/s); elsewhere one
    line per pass that took longer than `PLAIN_AFTER_SECONDS`.
    """

    SHOW_AFTER_SECONDS = 0.5
    PLAIN_AFTER_SECONDS = 2.0
    LABELS = {"reading": "reading corpus", "encoding": "encoding tokens"}

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, float] = {}
        self._last: events.CorpusProgress | None = None

    def __call__(self, event: events.CorpusProgress) -> None:
        now = time.monotonic()
        if self._last is not None and self._last.phase != event.phase:
            self._finish_phase(now)
        started = self._started.setdefault(event.phase, now)
        self._last = event
        if not self.console.is_terminal or now - started < self.SHOW_AFTER_SECONDS:
            return
        if self._progress is None:
            from rich.progress import DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
                refresh_per_second=8,
            )
            self._progress.start()
        if event.phase not in self._tasks:
            self._tasks[event.phase] = self._progress.add_task(
                self.LABELS.get(event.phase, event.phase), total=max(1, event.total_bytes)
            )
        self._progress.update(self._tasks[event.phase], completed=event.done_bytes)

    def _finish_phase(self, now: float) -> None:
        last = self._last
        if last is None:
            return
        seconds = now - self._started.get(last.phase, now)
        if not self.console.is_terminal and seconds >= self.PLAIN_AFTER_SECONDS:
            megabytes = last.done_bytes / 1e6
            self.console.print(
                f"{self.LABELS.get(last.phase, last.phase)}: {megabytes:,.1f} MB in {seconds:.1f}s "
                f"({megabytes / max(seconds, 1e-9):,.1f} MB/s)",
                markup=False,
                highlight=False,
            )

    def close(self) -> None:
        """End the display (idempotent)."""
        self._finish_phase(time.monotonic())
        self._last = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def format_duration(seconds: float | None) -> str:
    """Seconds as `1:02:03` or `4:05`; `-` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARKLINE_WIDTH = 12


def sparkline(values: list[float], width: int = SPARKLINE_WIDTH) -> str:
    """The last `width` values as one line of block characters, lowest to highest
    (non-finite ones left out)."""
    shown = [value for value in values if value is not None and math.isfinite(value)][-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    # In halves: the span of a resumed run's damaged values (-1e308 to 1e308) overflowed to inf,
    # and inf / inf is nan, which round() refused.
    span = high / 2 - low / 2
    if span < 5e-13:
        return SPARK_BLOCKS[len(SPARK_BLOCKS) // 2] * len(shown)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((value / 2 - low / 2) / span * top)] for value in shown)


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


class TrainingDisplay:
    """Turns training events into a live Rich progress bar, or plain log lines off a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None  # set with _progress, in the same place
        self._last_plain_line = 0.0
        self._started: events.TrainingStarted | None = None
        self._val_loss: float | None = None
        self._val_bpc: float | None = None
        self._val_bpc_history: list[float] = []  # the live display's sparkline

    def __call__(self, event: object) -> None:
        if isinstance(event, events.TrainingStarted):
            self._on_start(event)
        elif isinstance(event, events.StepDone):
            self._on_step(event)
        elif isinstance(event, events.EvaluationDone):
            self._on_evaluation(event)
        elif isinstance(event, events.Notice):
            message = terminal_safe(event.message)  # it may name files and the characters in them
            self.console.print(f"[yellow]note:[/] {_escape(message)}" if self.live else f"note: {message}")

    def _on_start(self, event: events.TrainingStarted) -> None:
        self._started = event
        unit = "chars" if event.tokenizer == "char" else "tokens"
        budget = (
            f"{event.max_steps} steps"
            if event.max_steps is not None
            else f"{format_duration(event.budget_seconds)} of training"
        )
        if event.budget_seconds is not None and event.max_steps is not None:
            budget = f"{event.max_steps} steps or {format_duration(event.budget_seconds)}"
        reason = event.sizing.get("reason") if isinstance(event.sizing, dict) else None
        if reason and not event.resumed:
            # First, so the user reads what was chosen for them before anything else.
            self.console.print(f"sized: {terminal_safe(reason)}", markup=False, highlight=False)
        self.console.print(
            f"charrnn: {event.num_parameters:,} parameters, vocabulary {event.vocab_size} "
            f"({event.tokenizer}, {event.chars_per_token:.2f} chars/token), "
            f"{event.train_tokens:,} train / {event.val_tokens:,} val {unit}, "
            f"batch {event.batch_size} x {event.seq_len}"
            + (f" x {event.processes} processes" if event.processes > 1 else "")
            + (f", {event.stream_groups} stream groups" if event.stream_groups > 1 else "")
            + f", {event.device} {event.precision} "
            f"{event.threads} threads, {budget}"
            + (f", resuming at step {event.start_step}" if event.resumed else ""),
            markup=False,
            highlight=False,
        )
        self.console.print(f"run directory: {terminal_safe(event.run_dir)}", markup=False)
        if event.parent is not None:
            self.console.print(
                f"started from {terminal_safe(event.parent.get('name'))} (weights sha256 "
                f"{terminal_safe(str(event.parent.get('weights_sha256'))[:12])})",
                markup=False,
                highlight=False,
            )
        if event.eval_tokens < event.val_tokens:
            self.console.print(
                f"evaluating {event.eval_tokens:,} of the {event.val_tokens:,} validation {unit} each "
                "time, in pieces spread over the split (--eval-tokens; 0 = all)",
                markup=False,
                highlight=False,
            )
        if self.live:
            self._progress = Progress(
                TextColumn("step {task.fields[step]}"),
                BarColumn(),
                TextColumn("{task.fields[elapsed]} elapsed, {task.fields[remaining]} left"),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn(
                    "val {task.fields[val]} nats/tok, {task.fields[bpc]} bits/char {task.fields[curve]}"
                ),
                TextColumn("{task.fields[speed]} chars/s"),
                console=self.console,
                transient=False,
                refresh_per_second=4,
            )
            self._task = self._progress.add_task(
                "train",
                total=1000,
                step=event.start_step,
                elapsed="0:00",
                remaining="-",
                loss="-",
                val="-",
                bpc="-",
                speed="-",
                curve=sparkline(self._earlier_val_bpc(event)),
            )
            self._progress.start()

    def _earlier_val_bpc(self, event: events.TrainingStarted) -> list[float]:
        """A resumed run's validation curve so far, so the sparkline goes on where it stopped."""
        if not event.start_step:
            return self._val_bpc_history
        from charrnn.errors import CharrnnError
        from charrnn.store.run_dir import RunDir

        try:
            records = RunDir(event.run_dir).read_metrics()
        except CharrnnError:
            records = []
        self._val_bpc_history = [
            record["val_bpc"]
            for record in records
            if isinstance(record.get("val_bpc"), (int, float)) and not isinstance(record["val_bpc"], bool)
        ]
        return self._val_bpc_history

    def _remaining(self, event: events.StepDone) -> float | None:
        """Seconds left: the rest of the time budget, or the steps left at the current speed."""
        start = self._started
        if start is None:
            return None
        estimates = []
        if start.budget_seconds is not None:
            estimates.append(start.budget_seconds - event.elapsed)
        if start.max_steps is not None and event.chars_per_second > 0:
            chars_per_step = start.batch_size * start.processes * start.seq_len * start.chars_per_token
            estimates.append((start.max_steps - event.step) * chars_per_step / event.chars_per_second)
        return max(0.0, min(estimates)) if estimates else None

    def _on_step(self, event: events.StepDone) -> None:
        remaining = self._remaining(event)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                completed=int(event.progress * 1000),
                step=event.step,
                elapsed=format_duration(event.elapsed),
                remaining=format_duration(remaining),
                loss=_number(event.loss),
                speed=f"{event.chars_per_second:,.0f}",
            )
            return
        now = time.monotonic()
        if now - self._last_plain_line >= PLAIN_LOG_INTERVAL_SECONDS:
            self._last_plain_line = now
            self.console.print(
                f"step {event.step} | {format_duration(event.elapsed)} elapsed, "
                f"{format_duration(remaining)} left | loss {_number(event.loss)} | "
                f"lr {event.learning_rate:.2e} | grad norm {_number(event.grad_norm, 2)} (before clipping) | "
                f"{event.chars_per_second:,.0f} chars/s",
                markup=False,
                highlight=False,
            )

    def _on_evaluation(self, event: events.EvaluationDone) -> None:
        self._val_loss, self._val_bpc = event.val_loss, event.val_bpc
        self._val_bpc_history.append(event.val_bpc)
        line = (
            f"step {event.step} | val loss {event.val_loss:.4f} nats/token | "
            f"{event.val_bpc:.4f} bits/char{' (best)' if event.is_best else ''} | "
            f"train loss {_number(event.train_loss, 4)} | eval {event.eval_seconds:.1f}s"
        )
        # One line of preview: never wider than the terminal (indent and "sample: " included).
        width = max(20, min(160, self.console.width - 12)) if self.live else 160
        preview = event.preview.strip("\n").replace("\n", " ⏎ ")[:width]
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                val=_number(event.val_loss),
                bpc=_number(event.val_bpc),
                curve=sparkline(self._val_bpc_history),
            )
            self._progress.console.print(line, markup=False, highlight=False)
            self._progress.console.print(f"  [dim]{_escape(preview)}[/]")
        else:
            self.console.print(line, markup=False, highlight=False)
            self.console.print(f"  sample: {preview}", markup=False, highlight=False)

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def finished_message(event: events.TrainingFinished) -> str:
    """The last line of a training run."""
    why = {
        events.StopReason.DONE: "finished",
        events.StopReason.TIME: "time budget spent",
        events.StopReason.INTERRUPTED: "interrupted",
        events.StopReason.EARLY_STOP: "stopped early (validation stopped improving)",
    }[event.reason]
    return (
        f"{why} at step {event.step} after {format_duration(event.elapsed)}: best val loss "
        f"{_number(event.best_val_loss, 4)} nats/token, {_number(event.best_val_bpc, 4)} bits/char; "
        f"saved in {event.run_dir}"
    )
