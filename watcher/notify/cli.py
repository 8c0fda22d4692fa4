"""The alert commands of the CLI: `watcher test-alert`, `watcher alerts list|retry`,
`watcher incidents list|resolve` and `watcher silence add|list|expire`."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from watcher.clock import SystemClock
from watcher.config import RoutingConfig, StoreConfig
from watcher.notify.deadletters import list_dead_letters, retry_dead_letters
from watcher.notify.incidents import IncidentNotFound, incident_rows, resolve_manually
from watcher.notify.testalert import TestAlertError, send_test_alert
from watcher.notify.text import human_seconds, one_line
from watcher.silences import InvalidSilence, new_silence, silence_json
from watcher.store.base import Delivery, Store, StoredSilence
from watcher.store.opening import open_store


async def _open_existing(config: StoreConfig) -> Store:
    # A mistyped store.path must not create an empty database and report "0 dead letters";
    # nor may a command migrate the running watchers' schema.
    return await open_store(config, create=False)


async def test_alert(
    config: RoutingConfig,
    channel: str,
    out: TextIO,
    *,
    workspace: str,
    workspace_ids: Mapping[str, str],
) -> int:
    """Exit code 0 when the test alert was accepted, 1 otherwise (with the reason).
    `workspace` and `workspace_ids` as for `send_test_alert` (the CLI passes the first
    configured workspace and the ids of all)."""
    try:
        detail = await send_test_alert(
            config, channel, stream=out, workspace=workspace, workspace_ids=workspace_ids
        )
        print(detail, file=out)
    except TestAlertError as exc:
        print(f"watcher: {exc}", file=out)
        return 1
    return 0


def _dead_letter(delivery: Delivery) -> dict[str, object]:
    """A dead letter as one JSON object: the delivery, and what its event was about."""
    event = delivery.event
    return {
        "event_id": event.id,
        "type": event.type,
        "workspace": event.workspace,
        "job_id": event.job.job_id,
        "job_name": event.job.name,
        "run_id": event.run.run_id,
        "channel": delivery.key.channel,
        "recipient": delivery.key.recipient or None,
        "attempts": delivery.attempts,
        "created_at": delivery.created_at,
        "last_error": delivery.last_error,
    }


async def dead_letters(
    store_config: StoreConfig,
    action: str,
    event_ids: Sequence[str] | None,
    out: TextIO,
    *,
    output: str = "table",
) -> int:
    """`list` prints the dead letters (a table, or JSON lines with `output="json"`),
    `retry` requeues them: all, or those of the given events, in the configured store.
    Exit code 1 when given events have no dead letter (a mistyped id says so)."""
    wanted = list(event_ids) if event_ids else None
    store = await _open_existing(store_config)
    try:
        if action == "list" and output == "json":
            found = [
                d for d in await store.dead_letters() if wanted is None or d.event.id in wanted
            ]
            for delivery in found:
                print(json.dumps(_dead_letter(delivery)), file=out)
            return 1 if wanted and not found else 0
        if action == "list":
            lines = await list_dead_letters(store, event_ids=wanted)
            for line in lines:
                print(line, file=out)
            print(f"dead letters: {max(0, len(lines) - 1)}", file=out)
            return 1 if wanted and not lines else 0
        count = await retry_dead_letters(store, now=time.time(), event_ids=wanted)
        print(f"requeued: {count} (the running watcher delivers them)", file=out)
        if wanted and count == 0:
            print("watcher: no dead letter has those event ids (see: alerts list)", file=out)
            return 1
        return 0
    finally:
        await store.close()


async def incidents(
    store_config: StoreConfig,
    config: RoutingConfig,
    action: str,
    out: TextIO,
    *,
    wanted: str | None = None,
    show_all: bool = False,
    output: str = "table",
) -> int:
    """`list` prints the incidents (open ones, or all); `resolve` resolves the open
    incident `wanted`. Exit code 1 when no open incident has that id."""
    store = await _open_existing(store_config)
    try:
        if action == "list":
            found = await store.incidents(open_only=not show_all)
            if output == "json":
                for incident in found:
                    print(incident.model_dump_json(), file=out)
                return 0
            for line in incident_rows(found):
                print(line, file=out)
            print(f"incidents: {len(found)}", file=out)
            return 0
        assert wanted is not None
        try:
            event = await resolve_manually(store, config, wanted, clock=SystemClock())
        except IncidentNotFound as exc:
            print(f"watcher: {exc}", file=out)
            return 1
        assert event.incident is not None
        print(
            f"resolved {event.incident.key} (incident {event.incident.id}); "
            f"the running watcher sends event {event.id}",
            file=out,
        )
        return 0
    finally:
        await store.close()


async def silences(
    store_config: StoreConfig,
    action: str,
    out: TextIO,
    err: TextIO,
    *,
    output: str = "table",
    **args: Any,
) -> int:
    """`add` stores a new silence (the running watchers hold matching events back from
    their next cycle on), `list` shows those not over (`show_all`: expired ones too),
    `expire` ends one now. Exit code 2 for a silence that cannot be added, 1 for an
    unknown id; what went wrong goes to `err`."""
    now = time.time()
    if action == "add":
        try:
            silence = new_silence(now=now, **args)
        except InvalidSilence as exc:
            for problem in exc.problems:
                print(f"watcher: {option_names(problem)}", file=err)
            return 2
    store = await _open_existing(store_config)
    try:
        if action == "add":
            await store.add_silence(silence)
            _print_silences([silence], now, out, output, footer=False)
            return 0
        if action == "expire":
            wanted: str = args["silence_id"]
            found = [s for s in await store.silences(now=now) if s.id.startswith(wanted)]
            if len(found) != 1 or len(wanted) < MIN_ID_PREFIX:
                why = "matches several" if len(found) > 1 else "is no silence still in force"
                if found and len(wanted) < MIN_ID_PREFIX:
                    why = f"is shorter than {MIN_ID_PREFIX} characters"
                print(f"watcher: {wanted!r} {why}", file=err)
                return 1
            expired = await store.expire_silence(found[0].id, now=now)
            if expired is None:  # ended meanwhile
                print(f"watcher: {wanted!r} is no silence still in force", file=err)
                return 1
            _print_silences([expired], now, out, output, footer=False)
            return 0
        listed = await store.silences(now=now, ended=bool(args.get("show_all")))
        _print_silences(listed, now, out, output)
        return 0
    finally:
        await store.close()


_OPTIONS = {
    "recurring.cron": "--every",
    "recurring.timezone": "--tz",
    "recurring.duration": "--window",
    "starts_at": "--start",
    "ends_at": "--until",
    "duration": "--for",
    "comment": "--comment",
}


def option_names(problem: str) -> str:
    """A problem of a silence as the CLI's user wrote it: `--tz: ...`, not
    `recurring.timezone: ...`."""
    field, colon, rest = problem.partition(":")
    return f"{_OPTIONS[field]}:{rest}" if colon and field in _OPTIONS else problem


MIN_ID_PREFIX = 6
"""`silence expire` takes an id's first characters, at least this many."""


def _print_silences(
    found: Sequence[StoredSilence], now: float, out: TextIO, output: str, *, footer: bool = True
) -> None:
    shown = [silence_json(s, now) for s in found]
    if output == "json":
        for entry in shown:
            print(json.dumps(entry), file=out)
        return
    for entry in shown:
        window = entry["recurring"]
        when = f"{entry['starts_at'] or '-'} .. {entry['ends_at'] or 'no end'}"
        if window:
            when += (
                f", windows {window['cron']} ({window['timezone']}) "
                f"for {human_seconds(window['duration'])}, next {entry['next_window_at'] or '-'}"
            )
        print(
            "\t".join(
                one_line(str(v))
                for v in (
                    entry["id"],
                    entry["state"],
                    " ".join(entry["matchers"]) or "(every event)",
                    when,
                    entry["created_by"],
                    entry["comment"],
                )
            ),
            file=out,
        )
    if footer:
        print(f"silences: {len(shown)}", file=out)
