"""Console: one readable line per alert on stdout or stderr, for the demo and debugging."""

from __future__ import annotations

import sys
from typing import TextIO

from watcher.config.channels import ConsoleChannelConfig
from watcher.events import Event
from watcher.notify.base import Failed, Result, Sent
from watcher.notify.templates import Template
from watcher.notify.text import one_line, truncate

LINE_LIMIT = 2000


class ConsoleChannel:
    def __init__(
        self, name: str, config: ConsoleChannelConfig, *, stream: TextIO | None = None
    ) -> None:
        self._name = name
        self._config = config
        self._stream = stream
        self._line = Template(
            "console.txt.j2",
            flavour="text",
            override=config.text_template,
            field=f"channels.{name}.text_template",
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> ConsoleChannelConfig:
        return self._config

    def line(self, event: Event) -> str:
        return truncate(one_line(self._line.render(event)), LINE_LIMIT)

    async def send(self, event: Event, *, recipient: str | None = None) -> Result:
        if recipient is not None:
            return Failed("a console channel has no recipients")
        stream = self._stream or (sys.stderr if self._config.stream == "stderr" else sys.stdout)
        stream.write(self.line(event) + "\n")
        stream.flush()
        return Sent()

    async def close(self) -> None:
        return None
