"""Console: one readable line per alert on stdout or stderr, for the demo and debugging.

A digest prints its headline (`digest <id>: 12 alerts in prod: 10 FAILED, ...`), then
each listed member's own line indented, then `and N more` for the members not listed."""

from __future__ import annotations

import sys
from typing import TextIO

from watcher.config.channels import ConsoleChannelConfig
from watcher.events import Event
from watcher.notify.base import ChannelBase, Digest, Result, Sent
from watcher.notify.templates import DIGEST_MEMBER_LIMIT, summarize
from watcher.notify.text import one_line, truncate

LINE_LIMIT = 2000


class ConsoleChannel(ChannelBase[ConsoleChannelConfig]):
    def __init__(
        self, name: str, config: ConsoleChannelConfig, *, stream: TextIO | None = None
    ) -> None:
        super().__init__(name, config)
        self._stream = stream
        self._line = self.template("console.txt.j2", flavour="text", field="text_template")

    def line(self, event: Event) -> str:
        return truncate(one_line(self._line.render(event)), LINE_LIMIT)

    def digest_lines(self, digest: Digest) -> list[str]:
        summary = summarize(digest.events, digest.group)
        head = truncate(one_line(f"digest {digest.id}: {summary.headline}"), LINE_LIMIT)
        members = ["  " + self.line(e) for e in digest.events[:DIGEST_MEMBER_LIMIT]]
        more = [f"  and {summary.more} more"] if summary.more else []
        return [head, *members, *more]

    def _write(self, lines: list[str]) -> None:
        stream = self._stream or (sys.stderr if self._config.stream == "stderr" else sys.stdout)
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()

    async def send(self, event: Event) -> Result:
        self._write([self.line(event)])
        return Sent()

    async def send_digest(self, digest: Digest) -> Result:
        """The headline and the members' lines (see the module docstring)."""
        self._write(self.digest_lines(digest))
        return Sent()
