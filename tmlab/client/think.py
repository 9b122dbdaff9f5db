"""Live ``<think>`` routing: streamed content in, (answer, reasoning) pieces out.

Some models write their reasoning into ``content`` as ``<think>…</think>``. While a stream
arrives, :class:`ThinkRouter` routes each piece of one choice's content to ``Delta.text`` or
``Delta.reasoning`` the way :func:`~tmlab.result.split_think` splits the finished text, even
when a tag is split across chunks: a possible partial tag at the end of a piece is held back
until the next piece shows whether it is one.
"""

from __future__ import annotations

from tmlab.result import THINK_CLOSE, THINK_OPEN

__all__ = ["ThinkRouter"]


def _partial_tag(s: str) -> int:
    """Length of the longest suffix of ``s`` that could begin a think tag (0 if none)."""
    start = s.rfind("<", max(0, len(s) - len(THINK_CLOSE) + 1))
    if start < 0:
        return 0
    tail = s[start:]
    return len(tail) if THINK_OPEN.startswith(tail) or THINK_CLOSE.startswith(tail) else 0


class ThinkRouter:
    """Routes streamed content into (answer, reasoning) the way ``split_think`` does.

    Only the first ``<think>…</think>`` block is reasoning (as in ``split_think``); text
    after it passes through unchanged, except that newlines right after the block are
    dropped while no answer text has been seen. A possible partial tag at the end of a piece
    is held back until the next piece shows whether it is one.
    """

    __slots__ = ("hold", "inside", "seen_text", "state")

    def __init__(self) -> None:
        self.hold = ""
        self.inside = False
        self.seen_text = False
        self.state = 0  # 0: no tag seen yet, 1: inside the block, 2: block closed

    def feed(self, piece: str) -> tuple[str, str]:
        if self.state == 2 and self.seen_text:
            return piece, ""
        s = self.hold + piece if self.hold else piece
        self.hold = ""
        text = reasoning = ""
        while s:
            if self.state == 0:
                i = s.find(THINK_OPEN)
                j = s.find(THINK_CLOSE)
                if j >= 0 and (i < 0 or j < i):
                    # A closing tag with no opening one: some parsers drop "<think>". What
                    # came before was already shown as text; drop the tag itself.
                    text += s[:j]
                    s = s[j + len(THINK_CLOSE) :]
                    self.state = 2
                    continue
                if i >= 0:
                    text += s[:i]
                    s = s[i + len(THINK_OPEN) :]
                    self.state = 1
                    continue
            elif self.state == 1:
                j = s.find(THINK_CLOSE)
                if j >= 0:
                    reasoning += s[:j]
                    s = s[j + len(THINK_CLOSE) :]
                    self.state = 2
                    continue
            else:  # closed: split_think strips newlines at the start of the answer
                if not self.seen_text and not text:
                    s = s.lstrip("\n")
                text += s
                break
            keep = _partial_tag(s)
            if keep:
                self.hold = s[-keep:]
                s = s[:-keep]
            if self.state == 1:
                reasoning += s
            else:
                text += s
            break
        if text:
            self.seen_text = True
        return text, reasoning

    def flush(self) -> tuple[str, str]:
        held, self.hold = self.hold, ""
        if self.state == 1:
            return "", held
        if self.state == 2 and not self.seen_text:
            held = held.lstrip("\n")
        return held, ""
