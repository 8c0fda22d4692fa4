"""Faults the simulator can inject into its API answers, per endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal["status", "latency", "reset", "malformed", "truncated", "delete_after_page"]


class Fault(BaseModel):
    """One injected fault. It applies to the next `times` matching requests (forever when
    `times` is None), in the order faults were added."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    endpoint: str = Field(default="*", description="e.g. 'runs/list', or '*' for every endpoint")
    status: int = 503
    retry_after: str | None = None
    body: str | None = Field(default=None, description="raw body instead of a JSON error")
    delay: float = Field(default=0.0, ge=0, description="real seconds, for kind=latency")
    count: int = Field(default=1, ge=1, description="runs to delete, for delete_after_page")
    times: int | None = Field(default=1, ge=1)

    def matches(self, endpoint: str) -> bool:
        return self.endpoint in ("*", endpoint)


class FaultPlan:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def take(self, endpoint: str, kinds: frozenset[str]) -> Fault | None:
        """The first armed fault of one of `kinds` for `endpoint`, spending one use of it."""
        for fault in self._faults:
            if fault.kind in kinds and fault.matches(endpoint):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def __len__(self) -> int:
        return len(self._faults)
