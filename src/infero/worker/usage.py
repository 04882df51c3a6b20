"""Cheap token-usage extraction from relayed OpenAI-style answers (no JSON parsing)."""

from __future__ import annotations

import re

from infero.protocol import link

_KEY = b'"usage"'
_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d{1,12})')
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d{1,12})')
_AFTER = 2048
"""Bytes kept after the last chunk that mentions usage (the object may continue there)."""


class TokenUsageScanner:
    """Remembers the last chunk that contains `"usage"`; parses it once at the end.

    Streams carry usage in their last event; whole bodies near their end. A usage key split
    across two chunks is missed (rare; the counters are informative, not billing).
    """

    __slots__ = ("_after", "_hit")

    def __init__(self) -> None:
        self._hit: bytes | None = None
        self._after = bytearray()

    def feed(self, chunk: bytes) -> None:
        """See one more chunk of the answer."""
        if _KEY in chunk:
            self._hit = chunk
            self._after.clear()
        elif self._hit is not None and len(self._after) < _AFTER:
            self._after += chunk[: _AFTER - len(self._after)]

    def result(self) -> link.Usage | None:
        """Prompt/completion (or input/output) tokens of the last usage object, if any."""
        if self._hit is None:
            return None
        data = self._hit + bytes(self._after)
        segment = data[data.rfind(_KEY) :]
        prompt = _PROMPT.search(segment)
        completion = _COMPLETION.search(segment)
        if prompt is None and completion is None:
            return None
        return link.Usage(
            prompt_tokens=int(prompt.group(1)) if prompt else 0,
            completion_tokens=int(completion.group(1)) if completion else 0,
        )
