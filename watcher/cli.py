# PYTHON_ARGCOMPLETE_OK
"""Command line: the only place that reads argv and the environment."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import argcomplete
from argcomplete.shell_integration import shellcode

from watcher import __version__
from watcher.config import Config, ConfigError, load_config
from watcher.databricks.errors import DatabricksError
from watcher.events import Event
from watcher.logs import configure_logging
from watcher.store.base import StoreError, StoreFenced

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
OUTPUTS = ("table", "json")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    # Accepted before or after the command: `watcher --log-level DEBUG once -c F` or
    # `watcher once -c F --log-level DEBUG`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="lowest level logged, over the configuration's logging.level",
    )
    parser = argparse.ArgumentParser(
        prog="watcher",
        description="Watch Databricks job runs, alert on failures and duration breaches, "
        "and export run metrics to Prometheus.",
        parents=[common],
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **options: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], formatter_class=_Help, **options)

    def with_config(
        name: str, help_text: str, *, optional: bool = False
    ) -> argparse.ArgumentParser:
        sub = command(name, help=help_text, description=help_text)
        _config_option(sub, optional=optional)
        return sub

    run = with_config(
        "run",
        "run the daemon until SIGTERM/SIGINT (without -c: one workspace from DATABRICKS_HOST "
        "and its credentials in the environment or ~/.databrickscfg, alerts on the console)",
        optional=True,
    )
    run.add_argument(
        "--accept-new-state",
        action="store_true",
        help="start even when the database file is empty (its state, pending alerts "
        "included, was lost): begin anew",
    )
    with_config("check-config", "validate a configuration file (exit 0 valid, 2 invalid)")
    status = with_config(
        "status",
        "show what the watcher sees: workspaces, active runs, recent events and their "
        "deliveries, open incidents, dead letters, silences (the page at / as text)",
    )
    status.add_argument(
        "--url",
        help="the running watcher, whose /status tells each workspace's poll health "
        "(default: http://127.0.0.1:<server.port>); if it does not answer, the store's "
        "view is shown (watermarks, leases)",
    )
    _output_option(status)
    once = with_config("once", "poll every workspace once and print the events as JSON lines")
    once.add_argument("--dry-run", action="store_true", help="decide events but commit nothing")
    _output_option(once, default="json")
    test_alert = with_config("test-alert", "send a clearly marked test alert through a channel")
    test_alert.add_argument("--channel", required=True, help="channel name from the config")
    doctor = with_config(
        "doctor",
        "check online what check-config cannot: each workspace answers, the credentials "
        "work, every endpoint may be read, each channel's server can be reached "
        "(exit 0 all good, 1 otherwise)",
    )
    doctor.add_argument(
        "--send", action="store_true", help="also send a test alert through every channel"
    )
    alerts = command(
        "alerts", help="inspect or replay dead-lettered alerts", description="Dead letters."
    )
    actions = alerts.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in [
        ("list", "show the dead letters (all, or those of --event)"),
        ("retry", "requeue dead letters for the running watcher: --event IDs, or --all"),
    ]:
        sub = actions.add_parser(
            action, help=text, description=text, parents=[common], formatter_class=_Help
        )
        _config_option(sub)
        sub.add_argument("--event", action="append", help="an event id (repeatable)")
        if action == "list":
            _output_option(sub)
        if action == "retry":
            sub.add_argument("--all", action="store_true", help="every dead letter")

    incidents = command(
        "incidents",
        help="list incidents, or resolve one by hand",
        description="Incidents: a failing job, a job's runs over a duration rule, an "
        "unreadable item, open until resolved.",
    )
    verbs = incidents.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = verbs.add_parser(
        "list",
        help="show incidents (open ones; --all for every one)",
        parents=[common],
        formatter_class=_Help,
    )
    _config_option(listing)
    listing.add_argument("--all", action="store_true", help="resolved incidents too")
    _output_option(listing)
    resolving = verbs.add_parser(
        "resolve",
        help="resolve an open incident now: the resolve goes to every channel it was paged to",
        parents=[common],
        formatter_class=_Help,
    )
    _config_option(resolving)
    resolving.add_argument("incident", help="incident id (or a prefix of 8+ characters)")

    _silence_commands(command("silence", help=SILENCE_HELP, description=SILENCE_HELP), common)

    routes = command(
        "routes",
        help="where an event would go, without sending",
        description="Routing dry-runs (like amtool config routes test).",
    )
    tests = routes.add_subparsers(dest="action", required=True, metavar="ACTION")
    dry_run = tests.add_parser(
        "test",
        help="print the matching routes, the channels, the silences and each channel's "
        "message for a sample event; nothing is sent",
        parents=[common],
        formatter_class=_Help,
    )
    _config_option(dry_run)
    dry_run.add_argument("--event", required=True, help="event type, e.g. run_failed")
    dry_run.add_argument("--workspace", required=True, help="workspace name")
    dry_run.add_argument("--job", required=True, help="job name")
    dry_run.add_argument("--job-id", type=int, default=1, help="job id")
    dry_run.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="a job tag (repeatable)"
    )
    dry_run.add_argument("--failures", type=int, default=1, help="consecutive failures so far")

    completion = command(
        "completion",
        help='print the shell completion script: eval "$(watcher completion bash)"',
        description="Tab completion of commands and options (argcomplete): add "
        'eval "$(watcher completion bash)" to ~/.bashrc (zsh: ~/.zshrc with zsh).',
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), help="your shell")

    demo = command(
        "demo",
        help="the whole system on a simulated workspace: no account, no config needed",
        description="Start a simulated Databricks workspace with a lively workload in "
        "accelerated time, the watcher against it, alerts printed to the console, and "
        "the metrics server.",
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after N real seconds")
    demo.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    demo.add_argument("--port", type=int, default=9108, help="metrics port (0 = any)")
    demo.add_argument("--jobs", type=int, default=12, help="jobs in the workload")
    demo.add_argument("--seed", type=int, default=7, help="workload seed")

    sim = command(
        "simulate", help="serve a simulated Databricks workspace (Jobs API) with a random workload"
    )
    sim.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    sim.add_argument("--port", type=int, default=8765, help="port, 0 for any")
    sim.add_argument("--jobs", type=int, default=12, help="jobs in the workload")
    sim.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    sim.add_argument("--failure-rate", type=float, default=0.2, help="share of failing runs")
    sim.add_argument("--seed", type=int, default=7, help="workload seed")
    sim.add_argument("--token", default="dapi-simulator-token", help="accepted bearer token")
    sim.add_argument("--duration", type=float, default=None, help="stop after N real seconds")
    return parser


SILENCE_HELP = (
    "hold alerts back at run time (like amtool silence): stored in the store, so every "
    "replica holds them and they survive restarts"
)


def _silence_commands(silence: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    from watcher.silences import MATCHER_HELP

    actions = silence.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(
            name, help=text, description=text, parents=[common], formatter_class=_Help
        )
        _config_option(sub)
        return sub

    add = action(
        "add",
        "add a silence: the running watchers hold matching alerts back from their next "
        "cycle on (resolves of incidents already paged still go out)",
    )
    add.add_argument("--match", action="append", default=[], metavar="KEY=VALUE", help=MATCHER_HELP)
    add.add_argument("--comment", required=True, help="why, for the next on-call")
    add.add_argument(
        "--author",
        default=os.environ.get("USER") or "cli",
        help="who adds it (default: $USER)",
    )
    add.add_argument("--for", dest="duration", help="how long: 90s, 30m, 2h, 1d, 1h30m")
    add.add_argument("--until", help="end time, ISO 8601 with a time zone")
    add.add_argument("--start", help="start time, ISO 8601 with a time zone (default: now)")
    add.add_argument(
        "--every",
        metavar="CRON",
        help="recurring windows: when each starts, as a Quartz cron expression "
        "(`0 0 2 ? * SAT`: Saturdays 02:00); for ever unless --for or --until",
    )
    add.add_argument("--window", help="with --every: how long each window lasts (2h)")
    add.add_argument("--tz", help="with --every: the time zone of its wall clock (default UTC)")
    _output_option(add)
    listing = action("list", "show the silences added at run time that are not over")
    listing.add_argument("--all", action="store_true", help="expired ones too")
    _output_option(listing)
    expire = action("expire", "end a silence now")
    expire.add_argument("silence_id", metavar="ID", help="silence id (or its first 6+ characters)")
    _output_option(expire)


def _output_option(parser: argparse.ArgumentParser, default: str = "table") -> None:
    parser.add_argument(
        "-o", "--output", choices=OUTPUTS, default=default, help="table for people, json lines"
    )


def _config_option(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=os.environ.get("WATCHER_CONFIG"),
        required=not optional and "WATCHER_CONFIG" not in os.environ,
        help="configuration file (default: $WATCHER_CONFIG)",
    )


def _from_environment() -> Config | None:
    """`watcher run` without a file: one workspace as the Databricks CLI and SDKs find it
    (DATABRICKS_HOST and a token or client credentials, or a ~/.databrickscfg profile)."""
    from watcher.config import config_from_environment

    try:
        config = config_from_environment(os.environ)
    except ConfigError as exc:
        print(
            "watcher: no -c FILE nor $WATCHER_CONFIG, and no usable workspace in the environment:",
            file=sys.stderr,
        )
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return None
    (workspace,) = config.workspaces
    print(
        f"watcher: no -c FILE: watching {workspace.host} as the environment says, "
        "alerts on the console only",
        file=sys.stderr,
    )
    return config


def check_config(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    """The configuration at `path`, checked as far as it can be without the network: the
    file (`load_config`) and every channel built as `run` builds it, which compiles its
    templates and renders them for every event type. Raises ConfigError, and nothing else,
    whatever the file holds. Every command loads through here: what check-config accepts,
    `run` starts with."""
    from watcher.clock import SystemClock
    from watcher.notify.channels import build_channel
    from watcher.notify.templates import InvalidTemplate, template_errors

    config = load_config(path, env=env)
    errors = [e for name, c in config.channels.items() for e in template_errors(name, c)]
    if errors:
        raise ConfigError(errors)
    for name, channel in config.channels.items():
        try:
            build_channel(name, channel, clock=SystemClock())
        except InvalidTemplate as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError(errors)
    return config


def _load(path: Path, out: TextIO) -> Config | None:
    try:
        return check_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration", file=out)
        for line in exc.errors:
            print(f"  {line}", file=out)
        return None


def _stop_on_signals(stop: asyncio.Event) -> None:
    # Handlers only set the event; shutdown itself happens in the serving task.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _run(config: Config, accept_new_state: bool) -> int:
    from watcher.app import build, serve

    stop = asyncio.Event()
    _stop_on_signals(stop)  # before build: a SIGTERM during start-up still stops cleanly
    daemon = await build(config, accept_new_state=accept_new_state)
    return await serve(daemon, stop=stop)


# `once` is run by hand: an unreachable workspace should say so in seconds, not minutes.
ONCE_RETRY_BUDGET = 10.0


def _event_line(event: Event, output: str) -> str:
    from watcher.notify.text import one_line

    """An event as `once` prints it: its JSON, or one line for people."""
    if output == "json":
        return event.model_dump_json(exclude_none=True)
    job = one_line(event.job.name or f"run {event.run.run_id}")  # no escape sequences
    return "\t".join(
        (
            event.occurred_at.isoformat(timespec="seconds"),
            event.type,
            event.workspace,
            job,
            str(event.run.run_id),
            event.id,
        )
    )


async def _once(config: Config, dry_run: bool, output: str = "json") -> int:
    from watcher.app import build, close
    from watcher.leases import replica_name

    daemon = await build(config, dry_run=dry_run, retry_budget=ONCE_RETRY_BUDGET)
    # Like a replica, `once` polls a workspace only under its lease (a dry run writes
    # nothing, so needs none): a running watcher's workspaces are left to it.
    replica = f"once:{replica_name()}:{os.getpid()}"
    code = 0
    try:
        for poller in daemon.pollers:
            ws = poller.workspace
            lease = None
            if not dry_run:
                ttl = config.ha.lease_seconds
                lease = await daemon.store.acquire(ws, replica, now=time.time(), ttl=ttl)
                if lease is None:
                    print(
                        f"watcher: workspace {ws}: skipped, another watcher holds its lease",
                        file=sys.stderr,
                    )
                    continue
            try:
                result = await poller.poll()
                events = await daemon.pipeline.handle(
                    result, epoch=None if lease is None else lease.epoch
                )
            except (DatabricksError, StoreFenced) as exc:
                # Fenced: the poll outlasted the lease and a running watcher took the
                # workspace meanwhile; nothing was committed.
                print(f"watcher: workspace {ws}: {exc}", file=sys.stderr)
                code = 1
                continue
            finally:
                if lease is not None:
                    await daemon.store.release(ws, replica, lease.epoch, now=time.time())
            for event in events:
                print(_event_line(event, output), flush=True)
    finally:
        await close(daemon)
    return code


def _routes_test(config: Config, args: argparse.Namespace) -> int:
    from watcher.clock import SystemClock
    from watcher.events import EventType
    from watcher.notify.routestest import Sample, explain

    try:
        event_type = EventType(args.event)
    except ValueError:
        known = ", ".join(t.value for t in EventType)
        print(f"watcher: --event {args.event!r} is no event type ({known})", file=sys.stderr)
        return 2
    tags = dict(t.partition("=")[::2] for t in args.tag)
    sample = Sample(event_type, args.workspace, args.job, args.job_id, tags, args.failures)
    print(asyncio.run(explain(config.routing, sample, clock=SystemClock())))
    return 0


def _silence(config: Config, args: argparse.Namespace) -> int:
    from watcher.notify.cli import silences
    from watcher.silences import InvalidSilence, parse_duration

    options: dict[str, Any] = {}
    if args.action == "list":
        options["show_all"] = args.all
    elif args.action == "expire":
        options["silence_id"] = args.silence_id
    else:
        try:
            options = {
                "matchers": args.match,
                "comment": args.comment,
                "created_by": args.author,
                "starts_at": _moment(args.start, "--start"),
                "ends_at": _moment(args.until, "--until"),
                "duration": parse_duration(args.duration) if args.duration else None,
                "recurring": _recurring(args),
            }
        except InvalidSilence as exc:
            for problem in exc.problems:
                print(f"watcher: {problem}", file=sys.stderr)
            return 2
    return asyncio.run(
        silences(config.store, args.action, sys.stdout, sys.stderr, output=args.output, **options)
    )


def _moment(text: str | None, option: str) -> datetime | None:
    from watcher.silences import InvalidSilence

    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidSilence(
            [f"{option} {text!r}: give an ISO 8601 time with a time zone (2026-12-24T02:00Z)"]
        )
    return moment


def _recurring(args: argparse.Namespace) -> dict[str, Any] | None:
    from watcher.silences import InvalidSilence, parse_duration

    if args.every is None:
        if args.window is not None or args.tz is not None:
            raise InvalidSilence(["--window and --tz are for recurring windows: give --every"])
        return None
    if args.window is None:
        raise InvalidSilence(["--every needs --window: how long each window lasts"])
    return {
        "cron": args.every,
        "timezone": args.tz or "UTC",
        "duration": parse_duration(args.window),
    }


async def _doctor(config: Config, send: bool) -> int:
    from watcher.doctor import diagnose, render

    checks = await diagnose(config, send=send, out=sys.stdout)
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


async def _simulate(args: argparse.Namespace) -> int:
    from watcher.simulator.standalone import simulate

    return await simulate(
        host=args.host,
        port=args.port,
        jobs=args.jobs,
        speed=args.speed,
        failure_rate=args.failure_rate,
        seed=args.seed,
        token=args.token,
        duration=args.duration,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argcomplete.autocomplete(parser)  # answers a shell's completion request, then exits
    args = parser.parse_args(argv)
    command: str = args.command
    if command == "completion":
        print(shellcode(["watcher"], shell=args.shell))
        return 0
    if command == "simulate":
        return asyncio.run(_simulate(args))
    if command == "demo":
        from watcher.app import StartupError
        from watcher.demo import run_demo

        configure_logging(level=getattr(args, "log_level", "WARNING"), fmt="console")
        try:
            return asyncio.run(
                run_demo(
                    duration=args.duration,
                    speed=args.speed,
                    port=args.port,
                    jobs=args.jobs,
                    seed=args.seed,
                    out=sys.stdout,
                )
            )
        except StartupError as exc:
            print(f"watcher: {exc} (try --port 0)", file=sys.stderr)
            return 1
    config = _from_environment() if args.config is None else _load(args.config, sys.stderr)
    if config is None:
        return 2
    if command == "check-config":
        print(
            f"{args.config}: OK ({len(config.workspaces)} workspaces, "
            f"{len(config.channels)} channels, {len(config.routes)} routes)"
        )
        return 0
    level = getattr(args, "log_level", config.logging.level)
    configure_logging(level=level, fmt=config.logging.format)
    from watcher.app import StartupError

    try:
        code = _command(args, config)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
        return code
    except (StoreError, StartupError) as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `watcher alerts list | head`: the reader is gone, which is no error of ours.
        # Python would complain again when flushing stdout at exit: point it elsewhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _command(args: argparse.Namespace, config: Config) -> int:
    command: str = args.command
    if command == "run":
        return asyncio.run(_run(config, args.accept_new_state))
    if command == "once":
        return asyncio.run(_once(config, args.dry_run, args.output))
    if command == "doctor":
        return asyncio.run(_doctor(config, args.send))
    if command == "test-alert":
        from watcher.notify.cli import test_alert
        from watcher.notify.payloads import workspace_ids

        return asyncio.run(
            test_alert(
                config.routing,
                args.channel,
                sys.stdout,
                workspace=config.workspaces[0].name,
                workspace_ids=workspace_ids(config.workspaces),
            )
        )
    if command == "routes":
        return _routes_test(config, args)
    if command == "silence":
        return _silence(config, args)
    if command == "status":
        from watcher.statuspage import print_status

        return asyncio.run(print_status(config, args.url, sys.stdout, output=args.output))
    if command == "incidents":
        from watcher.notify.cli import incidents

        return asyncio.run(
            incidents(
                config.store,
                config.routing,
                args.action,
                sys.stdout,
                wanted=getattr(args, "incident", None),
                show_all=getattr(args, "all", False),
                output=getattr(args, "output", "table"),
            )
        )
    from watcher.notify.cli import dead_letters

    if args.action == "retry" and not (args.event or args.all):
        print("watcher: alerts retry needs --event ID (repeatable) or --all", file=sys.stderr)
        return 2
    return asyncio.run(
        dead_letters(
            config.store,
            args.action,
            args.event,
            sys.stdout,
            output=getattr(args, "output", "table"),
        )
    )


if __name__ == "__main__":
    sys.exit(main())
