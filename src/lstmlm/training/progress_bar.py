"""A progress bar on a terminal; plain log lines (one a minute) when output goes to a file or pipe."""

import sys
import time


class ProgressBar:
    def __init__(self, total, label, enabled=None, log=None, interval_seconds=60.0):
        self.total, self.label = total, label
        self.bar = sys.stderr.isatty() if enabled is None else enabled
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.interval = 0.25 if self.bar else interval_seconds
        self.last = time.time()
        self.shown = False

    def due(self, done):
        return time.time() - self.last >= self.interval

    def update(self, done, text):
        self.last = time.time()
        if self.bar:
            filled = int(30 * done / max(1, self.total))
            sys.stderr.write(f"\r{self.label} [{'=' * filled}{'.' * (30 - filled)}] {done}/{self.total} {text}  ")
            sys.stderr.flush()
            self.shown = True
        else:
            self.log(f"{self.label} batch {done}/{self.total} {text}")

    def close(self):
        if self.bar and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False
