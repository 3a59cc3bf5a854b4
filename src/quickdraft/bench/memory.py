"""Peak resident memory while something runs: a thread samples the RSS of a process every `interval`."""

from __future__ import annotations

import os
import threading

import psutil


class PeakRSS:
    """with PeakRSS() as peak: ...; peak.bytes is the largest RSS seen (sampled, plus at entry and exit)."""

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        self._process = psutil.Process(pid or os.getpid())
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bytes = 0

    def _sample(self) -> None:
        try:
            self.bytes = max(self.bytes, self._process.memory_info().rss)
        except psutil.Error:  # the process ended
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
