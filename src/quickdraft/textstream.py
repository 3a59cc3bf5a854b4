"""Turning token bytes into text as it streams: never a broken UTF-8 character, stop strings honoured.

A token can end in the middle of a multi-byte character, and a stop string can straddle two tokens, so
text that might still change is held back until the next token settles it.
"""

from __future__ import annotations

import codecs
from typing import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()):
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text that may be the start of a stop string
        self.stopped = False  # a stop string was found: nothing more will be emitted

    def push(self, data: bytes) -> str:
        """Feed a token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        return self._settle(self._held + self._decoder.decode(data), final=False)

    def flush(self) -> str:
        """End of generation: emit whatever is held back (an incomplete character becomes U+FFFD)."""
        if self.stopped:
            return ""
        return self._settle(self._held + self._decoder.decode(b"", final=True), final=True)

    def _settle(self, text: str, final: bool) -> str:
        if not self.stop:
            self._held = ""
            return text
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        hold = 0 if final else self._partial_stop_suffix(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
