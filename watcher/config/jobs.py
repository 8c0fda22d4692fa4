"""Selecting jobs by id, name pattern and tags: which jobs a workspace watches, which get
per-job metrics, which a rule, a route or a silence applies to."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from pydantic import Field

from watcher.config.base import Section


class JobMatch(Section):
    """Selects jobs. Every given criterion must hold; an empty match selects every job."""

    job_ids: list[int] = Field(default_factory=list, description="Job ids, any of them.")
    names: list[str] = Field(
        default_factory=list,
        description="Glob patterns on the job name (`nightly-*`), any of them.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags the job must carry; value `*` matches any value."
    )

    def matches(self, job_id: int | None, name: str | None, tags: Mapping[str, str]) -> bool:
        if self.job_ids and job_id not in self.job_ids:
            return False
        if self.names and not any(fnmatch.fnmatchcase(name or "", p) for p in self.names):
            return False
        return all(
            key in tags and (value == "*" or tags[key] == value) for key, value in self.tags.items()
        )

    @property
    def is_empty(self) -> bool:
        return not (self.job_ids or self.names or self.tags)


class JobFilter(Section):
    """Which jobs of a workspace are watched: included (all when `include` is empty) and
    not excluded."""

    include: JobMatch = Field(default_factory=JobMatch, description="Watch only these jobs.")
    exclude: JobMatch | None = Field(default=None, description="Never watch these jobs.")

    def allows(self, job_id: int | None, name: str | None, tags: Mapping[str, str]) -> bool:
        if not self.include.matches(job_id, name, tags):
            return False
        return self.exclude is None or not self.exclude.matches(job_id, name, tags)
