"""The ``springcore-bridge`` command line: ``run`` (default), ``simulate``, ``check``, ``health``,
``ha-remove``, ``--version``.

Exit status: 0 after a clean stop (SIGTERM/SIGINT) or a passed check, 1 for a failed check,
2 for bad settings or usage.

``run`` checks the settings here, then runs the bridge in this process (``bridge.runner``):
one reader, or with BRIDGE_READERS_FILE a fleet (``bridge.fleet_file``), reloaded on SIGHUP.
``simulate`` lives in ``bridge.console``.
Exit status 70 means a part of the bridge died: its supervisor restarts it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from pydantic.fields import FieldInfo

from bridge import __version__, logs
from bridge.config import (
    ENV_PREFIX,
    SECRET_FIELDS,
    ConfigError,
    Settings,
    load_run_settings,
    load_settings,
)
from bridge.console import run_simulator
from bridge.environment import env_file_to_read, unknown_variables
from bridge.options import BridgeOptions, OutboxOptions
from bridge.runner import print_problems, serve
from bridge.simulator import PROFILES, SEPARATORS, Simulator

log = logging.getLogger("bridge")


ENV_FILE_HELP = (
    "settings file (default: .env in the working directory, if there is one; "
    "a file named here must exist)"
)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", default=None, metavar="PATH", help=ENV_FILE_HELP)
    group = parser.add_argument_group(
        "settings (each also BRIDGE_<NAME> in the environment or the settings file)"
    )
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        meaning = _flag_help(name, info).replace("%", "%%")  # argparse %-formats help
        if info.annotation is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=meaning
            )
        else:
            group.add_argument(flag, dest=name, metavar="VALUE", default=None, help=meaning)


def _flag_help(name: str, info: FieldInfo) -> str:
    """``reader TCP port (default: 4000; BRIDGE_READER_PORT)``; a secret shows no value."""
    variable = ENV_PREFIX + name.upper()
    if name in SECRET_FIELDS:
        return f"{info.description} ({variable})"
    default = info.default
    if default is None:
        shown = "unset"
    elif isinstance(default, bool):
        shown = str(default).lower()  # as config.example.env writes it
    else:
        shown = str(default)
    return f"{info.description} (default: {shown}; {variable})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="springcore-bridge",
        description="MQTT bridge for SpringCard SpringCore readers (Smart Reader, JSON over TCP).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the bridge (the default)")
    run.add_argument(
        "--simulate",
        action="store_true",
        help="also start a simulated reader in this process and bridge it (no hardware needed)",
    )
    _add_setting_flags(run)
    remove = sub.add_parser(
        "ha-remove", help="remove this reader's Home Assistant discovery entries, then exit"
    )
    remove.add_argument(
        "--all",
        action="store_true",
        help="also clear the reader's retained meta and status topics (to decommission it)",
    )
    _add_setting_flags(remove)
    check = sub.add_parser(
        "check",
        help="check the settings, then the reader, the broker, the spool and the HTTP port",
    )
    _add_setting_flags(check)
    health = sub.add_parser(
        "health", help="ask a running bridge's HTTP listener whether it is healthy (exit 0/1)"
    )
    health.add_argument(
        "--ready", action="store_true", help="ask /readyz (broker and reader connected) instead"
    )
    _add_setting_flags(health)
    # --port, --interval, --readers, --rate and --log-level are checked by run_simulator: one
    # line, no usage.
    sim = sub.add_parser("simulate", help="run a SpringCore reader simulator")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", default="4000", help="TCP port, 0 = any free one (default 4000)")
    sim.add_argument(
        "--readers",
        default="1",
        help="simulate N readers in one process, on ports P ... P+N-1 (--port 0: any free ones); "
        "--interval, --moves and typed lines are for one reader (default 1)",
    )
    sim.add_argument(
        "--rate",
        default=None,
        help="events per second per reader with --readers 2 or more (default 1); 0 = none",
    )
    sim.add_argument("--interval", default="5", help="seconds between events (default 5); 0 = off")
    sim.add_argument("--profile", choices=[*PROFILES, "mixed"], default="mixed")
    sim.add_argument("--moves", action="store_true", help="send Insert/Remove pairs")
    sim.add_argument("--separator", choices=list(SEPARATORS), default="crlf")
    sim.add_argument(
        "--busy",
        choices=["close", "hang"],
        default="close",
        help="what a second client gets while one is connected",
    )
    sim.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def _settings(
    args: argparse.Namespace, extra: dict[str, object] | None = None, *, for_run: bool = True
) -> Settings:
    """The settings of a subcommand (flags over environment over file); logging set up, then
    one WARNING per BRIDGE_ variable that no setting reads, good settings or bad."""
    env_file = env_file_to_read(args.env_file)
    overrides: dict[str, object] = {name: getattr(args, name) for name in Settings.model_fields}
    overrides.update(extra or {})
    load = load_run_settings if for_run else load_settings
    try:
        settings = load(env_file=env_file, **overrides)
    except ConfigError:
        logs.configure("INFO", "text")
        _warn_unknown(env_file)  # a mistyped name often explains the problem
        raise
    logs.configure(settings.log_level, settings.log_format, settings.resolved_device_id())
    _warn_unknown(env_file)
    if settings.readers_file is None:  # in a fleet, they are defaults for the readers' tables
        for line in settings.ignored_settings():
            log.warning("%s", line)
    return settings


def _warn_unknown(env_file: Path | None) -> None:
    for line in unknown_variables(os.environ, env_file):
        log.warning("%s", line)


def run_bridge(args: argparse.Namespace) -> int:
    """Check the settings (exit 2 if bad), then run the bridge until a stop signal."""
    if args.simulate:
        return _run_demo(args)
    settings = _settings(args)
    if settings.readers_file is None:
        return serve(settings.bridge_options())
    from bridge.fleet_file import fleet_options  # noqa: PLC0415 - a fleet's only

    fleet = fleet_options(settings)
    logs.configure(settings.log_level, settings.log_format, "fleet", fleet=True)
    shard = f", shard {fleet.shard}" if fleet.shard else ""
    log.info(
        "fleet %s: %d reader(s) here%s", fleet.source, len(fleet.readers), shard or " (no shard)"
    )
    return serve(fleet, lambda: fleet_options(settings))


def _run_demo(args: argparse.Namespace) -> int:
    """``run --simulate``: a simulated reader and the bridge, both in this process."""
    simulator = _start_demo_reader(args)
    try:
        return serve(_settings(args, _demo_overrides(args, simulator)).bridge_options())
    finally:
        simulator.stop()


def remove_discovery(args: argparse.Namespace) -> int:
    """Publish empty retained configs: Home Assistant removes the entities and the device.
    With ``--all``, the reader's retained ``meta`` and ``status`` are cleared too."""
    from bridge.discovery import Discovery  # noqa: PLC0415 - paho only where needed
    from bridge.mqtt import publish_once  # noqa: PLC0415

    # A reader that is gone needs no address: its device id is enough.
    settings = _settings(args, for_run=False)
    if not (settings.device_id or settings.reader_host):
        raise ConfigError(["BRIDGE_DEVICE_ID: required (or BRIDGE_READER_HOST to derive it)"])
    discovery = Discovery(settings.ha_discovery_prefix, settings.topics(), settings.identity())
    topics = settings.topics()
    clearings = [(topics.meta, b""), (topics.status, b"")] if args.all else []
    failure = publish_once(settings.mqtt(), discovery.removals() + clearings)
    if failure:
        print(
            f"springcore-bridge: could not remove the discovery entries: {failure}", file=sys.stderr
        )
        return 1
    count = len(discovery.removals())
    print(f"removed {count} discovery entries of {discovery.node} under {discovery.prefix}/")
    if args.all:
        print(f"cleared the retained meta and status of {topics.base}")
        print("a bridge still running for this reader publishes them again when it reconnects")
    if settings.ha_discovery:
        print("set BRIDGE_HA_DISCOVERY=false, or the bridge announces them again when it starts")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Settings (exit 2), then one line per link, the spool, each allow file and the HTTP
    port; 0 only when every check passed."""
    from bridge.probe import (  # noqa: PLC0415 - paho only here
        CheckResult,
        check_allow_file,
        check_broker,
        check_listener,
        check_reader,
        check_spool_path,
    )

    settings = _settings(args)
    readers, outbox = _checked_readers(settings)
    http = settings.http()
    brokers = {(options.mqtt.username, options.mqtt.password): options for options in readers}
    allow_files = {o.local.allow_file for o in readers if o.local and o.local.allow_file}
    probes: list[Callable[[], CheckResult]] = [
        *(partial(check_reader, options.reader) for options in readers),
        *(partial(check_broker, options.mqtt) for options in brokers.values()),
        lambda: check_spool_path(outbox),
        *(partial(check_allow_file, path) for path in sorted(allow_files)),
        *([lambda: check_listener(http)] if http else []),
    ]
    failed = 0
    for probe in probes:
        result = probe()
        print(result.line(), flush=True)  # one by one: the reader and broker take a while
        failed += not result.ok
    return 1 if failed else 0


def _checked_readers(settings: Settings) -> tuple[list[BridgeOptions], OutboxOptions]:
    """The readers to check - one, or a fleet's (this shard's) - and their spool; the
    ConfigError of bad settings or a bad readers file."""
    if settings.readers_file is None:
        return [settings.bridge_options()], settings.outbox()
    from bridge.fleet_file import fleet_options  # noqa: PLC0415 - a fleet's only

    fleet = fleet_options(settings)
    return list(fleet.readers), fleet.outbox


def run_health(args: argparse.Namespace) -> int:
    """For the container HEALTHCHECK: 0 when the listener answers 200, else 1 and why."""
    from bridge.probe import check_health  # noqa: PLC0415 - keeps this frequent probe light

    try:
        options = _settings(args, for_run=False).http()
    except ConfigError as exc:  # not 2: Docker reserves it; a HEALTHCHECK answers 0 or 1
        print(f"springcore-bridge health: {'; '.join(exc.lines)}")
        return 1
    if options is None:
        print("springcore-bridge health: BRIDGE_HTTP_PORT is not set: no listener to ask")
        return 1
    result = check_health(options, "/readyz" if args.ready else "/healthz")
    print(result.line())
    return 0 if result.ok else 1


def _start_demo_reader(args: argparse.Namespace) -> Simulator:
    """``run --simulate``: a simulated reader on a free local port, an event every 3 s."""
    simulator = Simulator("127.0.0.1", 0).start()
    threading.Thread(target=simulator.run_timer, args=(3.0, PROFILES, True), daemon=True).start()
    return simulator


def _demo_overrides(args: argparse.Namespace, simulator: Simulator) -> dict[str, object]:
    return {
        "reader_host": "127.0.0.1",
        "reader_port": simulator.port,
        "device_id": args.device_id or "simulator",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    commands = ("run", "simulate", "ha-remove", "check", "health", "-h", "--help", "--version")
    if not arguments or arguments[0] not in commands:
        arguments.insert(0, "run")
    args = parser.parse_args(arguments)
    if args.command == "simulate":
        return run_simulator(args)
    try:
        if args.command == "ha-remove":
            return remove_discovery(args)
        if args.command == "check":
            return run_check(args)
        if args.command == "health":
            return run_health(args)
        return run_bridge(args)
    except ConfigError as exc:
        print_problems(exc)
        return 2
