"""Console: one readable line per alert on stdout or stderr, for the demo and debugging."""

from __future__ import annotations

import sys
from typing import TextIO

from watcher.config.channels import ConsoleChannelConfig
from watcher.events import Event
from watcher.notify.base import ChannelBase, Result, Sent
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

    async def send(self, event: Event) -> Result:
        stream = self._stream or (sys.stderr if self._config.stream == "stderr" else sys.stdout)
        stream.write(self.line(event) + "\n")
        stream.flush()
        return Sent()
