"""Turn token byte pieces into text as they arrive, never splitting a multi-byte UTF-8 character."""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Incremental UTF-8 decoder: bytes in, the complete characters so far out.

    A token can end in the middle of a character (emoji, CJK); its bytes wait here until the rest arrives.
    Invalid sequences become U+FFFD rather than an exception: a model can emit any byte.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        """The text of any bytes still held back (an unfinished character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)
