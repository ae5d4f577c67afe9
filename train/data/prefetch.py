"""Batches built ahead of the training step in a background thread, so the step loop does not wait for data.

On CUDA the thread also pins each batch and copies it to the device on a side stream (``non_blocking``); the
training stream waits on an event recorded after the copy, so host→device transfer overlaps the previous step.
Because every batch is a pure function of ``(step, micro_step)`` (:mod:`train.data.batches`), the thread simply
walks that sequence ahead of the loop; a request for any other position (a resume, an evaluation of a chosen
step) restarts it there, so results are identical with and without prefetching.
"""

from __future__ import annotations

import queue
import threading

import torch

from train.data.batches import BatchSampler

Key = tuple[int, int]  # (step, micro_step)


def _put(out: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(sampler: BatchSampler, key: Key, out: queue.Queue, stop: threading.Event, device: torch.device,
             stream: torch.cuda.Stream | None) -> None:
    """The thread body (a function, not a method: the thread must not keep the Prefetcher alive)."""
    try:
        while not stop.is_set():
            x, y = sampler.batch_at(*key)
            event = None
            if stream is not None:
                x, y = x.pin_memory(), y.pin_memory()
                with torch.cuda.stream(stream):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(stream)
            if not _put(out, (key, x, y, event), stop):
                return
            key = _after(key, sampler.grad_accum)
    except Exception as exc:  # handed to the training thread, which re-raises it
        _put(out, exc, stop)


def _after(key: Key, grad_accum: int) -> Key:
    step, micro = key[0], key[1] + 1
    return (step + 1, 0) if micro == grad_accum else (step, micro)


class Prefetcher:
    """``batch_at(step, micro_step)`` like :class:`BatchSampler`, served from up to ``depth`` batches built ahead
    (on ``device`` already when it is CUDA)."""

    def __init__(self, sampler: BatchSampler, device: torch.device, depth: int = 2) -> None:
        self.sampler, self.device, self.depth = sampler, torch.device(device), max(1, depth)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(self.depth)
        self._next: Key | None = None

    def batch_at(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if (step, micro_step) != self._next:
            self._restart((step, micro_step))
        item = self._queue.get()
        if isinstance(item, Exception):
            self._next = None
            raise item
        key, x, y, event = item
        self._next = _after(key, self.sampler.grad_accum)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            x.record_stream(current)  # memory allocated on the side stream, used on this one
            y.record_stream(current)
        return x, y

    def metrics(self, step: int) -> dict[str, float]:
        return self.sampler.metrics(step)

    def _restart(self, key: Key) -> None:
        self.close()
        self._stop, self._queue = threading.Event(), queue.Queue(self.depth)
        self._thread = threading.Thread(target=_produce, name="hyperp-prefetch", daemon=True,
                                        args=(self.sampler, key, self._queue, self._stop, self.device, self._stream))
        self._thread.start()
        self._next = key

    def close(self) -> None:
        """Stop the background thread (also done when the Prefetcher is garbage-collected)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __del__(self) -> None:
        self._stop.set()  # no join here: at interpreter exit the thread may already be gone
