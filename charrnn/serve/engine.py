"""The one worker thread that runs every model step, for every stream in flight at once.

Requests never touch the model: they hand their streams to `Engine.submit` with a sink (a
function the worker calls with each step's updates for that request; the server's sink moves
them onto the event loop with `call_soon_threadsafe`) and cancel them with `Engine.cancel`.
The worker admits waiting streams before each step (continuous batching: a new request joins
at the next step), runs one `StreamBatch.step` for all of them, and hands out the updates; a
finished, stopped or cancelled stream leaves the batch in that same step.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from charrnn.data.tokenizers import Tokenizer
from charrnn.generate.blas_threads import blas_threads_restored
from charrnn.generate.stream_batch import CANCELLED, Stream, StreamBatch, StreamUpdate
from charrnn.model import CharRNN

Sink = Callable[[list[StreamUpdate] | BaseException], object]

# A failure of the worker is said on this logger, one line (with no handler configured, Python's
# last-resort handler writes it to stderr): the library itself never prints.
log = logging.getLogger("charrnn.serve")


class Busy(Exception):
    """Every slot and the queue are taken: the request should come back later."""


class Stopped(Exception):
    """The engine takes no more streams (the server is stopping, or its worker failed)."""


@dataclass
class _Job:
    streams: list[Stream]
    sink: Sink


class Engine:
    """Continuous batching over one model: `submit` and `cancel` from any thread, steps on its own."""

    def __init__(
        self, model: CharRNN, tokenizer: Tokenizer, max_streams: int = 32, max_queued: int = 64
    ) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_streams, self.max_queued = max_streams, max_queued
        self.steps = 0  # batched steps run so far
        self.streams_in_flight = 0  # in the batch
        self.streams_queued = 0  # submitted, waiting for a slot
        self.streams_cancelled = 0
        self.streams_finished = 0
        self.peak_streams_in_flight = 0  # the largest batch so far
        self._reserved = 0  # streams submitted and not yet finished
        self._lock = threading.Lock()
        self._incoming: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self.failure: str | None = None  # why the worker stopped, once it has failed
        self._thread = threading.Thread(target=self._run, name="charrnn-serve-steps", daemon=True)

    def start(self) -> Engine:
        """Start the worker thread."""
        self._thread.start()
        return self

    def submit(self, streams: Sequence[Stream], sink: Sink) -> None:
        """Queue these streams (one request's); `sink` gets their updates, a list per step.

        Raises `Busy` when they do not fit in the batch and the queue together.
        """
        with self._lock:
            if self._closed:
                raise Stopped(self.failure or "the server is shutting down")
            if self._reserved + len(streams) > self.max_streams + self.max_queued:
                raise Busy(f"{self._reserved} streams are in flight or queued")
            self._reserved += len(streams)
            self.streams_queued += len(streams)
            # Queued under the lock: a worker that fails closes the engine under it, then drains the
            # queue, so no job can slip in after the drain and wait for ever.
            self._incoming.put(_Job(list(streams), sink))

    def cancel(self, streams: Sequence[Stream]) -> None:
        """Have these streams stop: they leave the batch before its next step (or never join it)."""
        for stream in streams:
            StreamBatch.cancel(stream)
        self._incoming.put(None)  # wakes the worker when it waits for work

    def stop(self) -> None:
        """End every stream at the next step and refuse new ones (returns at once; any thread)."""
        with self._lock:
            self._closed = True
        self._incoming.put(None)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker and wait for it: streams still in flight end as cancelled."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        """What the worker is doing, for `/health`."""
        return {
            "streams_in_flight": self.streams_in_flight,
            "streams_queued": self.streams_queued,
            "streams_finished": self.streams_finished,
            "streams_cancelled": self.streams_cancelled,
            "peak_streams_in_flight": self.peak_streams_in_flight,
            "steps": self.steps,
            "max_streams": self.max_streams,
            "max_queued": self.max_queued,
        }

    @property
    def failed(self) -> bool:
        """Whether the worker has stopped on an error (the server answers 503 from then on)."""
        return self.failure is not None

    def _release(self, count: int) -> None:
        with self._lock:
            self._reserved -= count

    def _run(self) -> None:
        batch: StreamBatch | None = None
        waiting: collections.deque[_Job] = collections.deque()
        try:
            with torch.inference_mode(), blas_threads_restored():
                batch = StreamBatch(self.model, self.tokenizer)
                self._loop(batch, waiting)
        except BaseException as error:  # a fault of the worker itself (also in building its batch)
            self._fail_worker(error, batch, waiting)

    def _fail_worker(
        self, error: BaseException, batch: StreamBatch | None, waiting: collections.deque[_Job]
    ) -> None:
        # No request may wait for ever: every one in the batch, waiting or queued gets the error
        # now; later ones are refused (`Stopped`, 503) with the same reason. The cause is said once,
        # in one line (a traceback would be noise to the person running the server).
        cause = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        reason = (
            f"the server's generation worker stopped ({cause}); this server cannot write text any "
            "more: restart `charrnn serve` (if it happens again, the model may not be servable: "
            "check it with `charrnn sample`)"
        )
        with self._lock:
            self._closed = True
            self.failure = reason
        sinks = {id(stream.sink): stream.sink for stream in batch.streams} if batch is not None else {}
        sinks.update({id(job.sink): job.sink for job in waiting})
        while True:
            try:
                job = self._incoming.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                sinks[id(job.sink)] = job.sink
        self.streams_in_flight = self.streams_queued = 0
        log.error("charrnn serve: %s", reason)
        stopped = RuntimeError(reason)
        for sink in sinks.values():
            # A sink whose event loop has closed raises: nobody waits on it, and the others must be told.
            with contextlib.suppress(Exception):
                sink(stopped)

    def _loop(self, batch: StreamBatch, waiting: collections.deque[_Job]) -> None:
        while True:
            if self._closed:
                self._end_all(batch, waiting)
                return
            block = not batch.streams and not waiting
            try:
                job = self._incoming.get(block=block)
                while True:
                    if job is not None:
                        waiting.append(job)
                    job = self._incoming.get_nowait()
            except queue.Empty:
                pass
            self._admit(batch, waiting)
            if not batch.streams:
                continue
            try:
                updates = batch.step()
            except Exception as error:  # a damaged model (non-finite scores): every stream ends with it
                self._fail(batch, error)
                continue
            self.steps += 1
            self._deliver(updates)
            self.streams_in_flight = len(batch.streams)

    def _admit(self, batch: StreamBatch, waiting: collections.deque[_Job]) -> None:
        # Every job that fits joins in one `add` (one new layout of the batch, not one per request).
        joining: list[_Job] = []
        free = self.max_streams - len(batch.streams)
        while waiting:
            job = waiting[0]
            live = [stream for stream in job.streams if not stream.cancelled]
            if len(live) > free and (batch.streams or joining):
                break
            waiting.popleft()
            self.streams_queued -= len(job.streams)
            gone = [stream for stream in job.streams if stream.cancelled]
            if gone:
                for stream in gone:
                    stream.finish_reason = CANCELLED
                self.streams_cancelled += len(gone)
                self._release(len(gone))
                job.sink([StreamUpdate(stream, "", finish_reason=CANCELLED) for stream in gone])
            if live:
                for stream in live:
                    stream.sink = job.sink
                joining.append(_Job(live, job.sink))
                free -= len(live)
        if not joining:
            return
        try:
            batch.add([stream for job in joining for stream in job.streams])
        except Exception as error:  # reading a prompt failed: those requests are told, the batch goes on
            for job in joining:
                self._release(len(job.streams))
                job.sink(error)
            return
        self.streams_in_flight = len(batch.streams)
        self.peak_streams_in_flight = max(self.peak_streams_in_flight, self.streams_in_flight)

    def _deliver(self, updates: list[StreamUpdate]) -> None:
        by_sink: dict[int, tuple[Sink, list[StreamUpdate]]] = {}
        ended = 0
        for update in updates:
            sink = update.stream.sink
            by_sink.setdefault(id(sink), (sink, []))[1].append(update)
            if update.finish_reason is not None:
                ended += 1
                if update.finish_reason == CANCELLED:
                    self.streams_cancelled += 1
                else:
                    self.streams_finished += 1
        if ended:
            self._release(ended)
        for sink, sink_updates in by_sink.values():
            sink(sink_updates)

    def _fail(self, batch: StreamBatch, error: BaseException) -> None:
        sinks = {id(stream.sink): stream.sink for stream in batch.streams}
        self._release(len(batch.streams))
        batch.streams.clear()
        self.streams_in_flight = 0
        for sink in sinks.values():
            sink(error)

    def _end_all(self, batch: StreamBatch, waiting: collections.deque[_Job]) -> None:
        for stream in batch.streams:
            stream.cancelled = True
        for job in waiting:
            for stream in job.streams:
                stream.cancelled = True
            self.streams_queued -= len(job.streams)
            job.sink([StreamUpdate(stream, "", finish_reason=CANCELLED) for stream in job.streams])
        if batch.streams:
            self._deliver(batch.step())
        self.streams_in_flight = 0
