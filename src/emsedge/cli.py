"""Commands: run, check-config, config-schema, contract-schema, browse, probe, buffer, simulate, demo, watch,
fleet, opcua-cert.

Every command that reads a config stops with exit status 78 (EX_CONFIG) and located messages
(file:line:column: field: problem (hint)) when the file is invalid, before anything connects. `run` stops
with one line and 73 (EX_CANTCREAT) when the buffer cannot be created or locked (a directory, a read-only
or full file system, no permission, another gateway on the file) and 78 when it was written by a newer
emsedge: never a traceback for what the operator has to fix.

Exit status, for every command: 0 success; 1 failure (e.g. `watch`/`fleet`: no broker or nothing
received; `check-config --online`: a signal unreadable); 2 usage; 3 `fleet`: a line offline; 4 `fleet`:
every line online but one losing data; 73 EX_CANTCREAT; 78 EX_CONFIG; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import sys
from pathlib import Path
from typing import cast

from emsedge import __version__
from emsedge.errors import ConfigError

EX_CONFIG = 78
EX_CANTCREAT = 73
DEFAULT_CONFIG = Path("/etc/emsedge/emsedge.yaml")


def _load_or_exit(path: Path) -> object:
    from emsedge.config import load_config  # noqa: PLC0415 - keep `emsedge --help` fast

    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc)
        raise SystemExit(EX_CONFIG) from None


def _print_problems(path: Path, exc: ConfigError) -> None:
    print(f"emsedge: configuration {path} invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415

    from emsedge.config import Settings  # noqa: PLC0415
    from emsedge.logging import configure_logging  # noqa: PLC0415
    from emsedge.runtime import Gateway  # noqa: PLC0415

    settings = cast(Settings, _load_or_exit(args.config))
    configure_logging(settings.logging)
    try:  # files the config names (CA, certificates, password files) are checked when parts are built
        gateway = Gateway(settings, args.config)
    except ConfigError as exc:
        _print_problems(args.config, exc)
        return EX_CONFIG
    # What exists now (modules, the config's models: ~10 per signal) lives as long as the process: the cyclic
    # collector need not walk it again each time the readings of a few polls trigger a full collection.
    gc.collect()
    gc.freeze()
    # A poll of 1,000 signals allocates 1,000 reading dicts (acyclic: freed by reference counting); at the
    # default threshold (700) every poll would also run the cyclic collector. Measured at 100k values/s:
    # GC from ~6% of the gateway's CPU to ~2%.
    gc.set_threshold(10_000, 10, 10)
    try:
        anyio.run(gateway.run)
    except BaseException as exc:
        startup = _buffer_error(exc)
        if startup is None:
            raise
        from emsedge.buffer.errors import BufferFormatError  # noqa: PLC0415

        print(f"emsedge: {startup}", file=sys.stderr)
        return EX_CONFIG if isinstance(startup, BufferFormatError) else EX_CANTCREAT
    return 0


def _buffer_error(exc: BaseException) -> BaseException | None:
    """The buffer's start-up error inside `exc` (task groups wrap it), when that is all that went wrong."""
    from emsedge.buffer.errors import BufferFormatError, BufferInUse, BufferUnwritable  # noqa: PLC0415

    found: list[BaseException] = []
    pending = [exc]
    while pending:
        e = pending.pop()
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        elif isinstance(e, BufferUnwritable | BufferInUse | BufferFormatError):
            found.append(e)
        elif not isinstance(e, asyncio.CancelledError):  # the other stages, cancelled as the buffer failed
            return None
    return found[0] if found else None


def cmd_check_config(args: argparse.Namespace) -> int:
    from emsedge.config import Settings, summary  # noqa: PLC0415

    settings = cast(Settings, _load_or_exit(args.file))
    print(f"{args.file}: OK")
    print(summary(settings))
    if args.online:
        from emsedge.tooling import main_check_online  # noqa: PLC0415

        return int(main_check_online(settings))
    return 0


DELEGATED = {
    "config-schema": ("emsedge.tooling:main_config_schema", "print the JSON Schema of the config"),
    "contract-schema": ("emsedge.contract:main_contract_schema",
                        "print the JSON Schemas of every MQTT payload (--asyncapi: the AsyncAPI document)"),
    "browse": ("emsedge.adapters.opcua.tools:main_browse", "print an OPC UA server's address space"),
    "opcua-cert": ("emsedge.adapters.opcua.tools:main_gen_cert", "generate a self-signed OPC UA client certificate"),
    "probe": ("emsedge.adapters.modbus.adapter:main_probe", "one-off read, e.g. probe modbus://host:502 --address 0"),
    "buffer": ("emsedge.tooling:main_buffer", "the local buffer: stats | export | purge | backup (-c FILE or --path)"),
    "simulate": ("emsedge.simulate:main_simulate", "run the virtual SMT line (-c config/virtual-line.yaml)"),
    "demo": ("emsedge.demo:main_demo", "virtual line + broker + gateway + live view of what MES receives"),
    "watch": ("emsedge.watch:main_watch", "live view of a line on any broker: watch --broker URL --prefix P"),
    "fleet": ("emsedge.fleet:main_fleet",
              "one row per line from the gateways' retained status: fleet --broker URL --prefix ems/SITE"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emsedge", description="Edge gateway for SMT/EMS lines.")
    parser.add_argument("--version", action="version", version=f"emsedge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help="config file (YAML)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and print a summary")
    check.add_argument("file", type=Path)
    check.add_argument("--online", action="store_true", help="also read every signal once and print a table")
    check.set_defaults(func=cmd_check_config)

    for name, (_target, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed in --help; dispatched in main()
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in DELEGATED:  # these parse their own options (argparse REMAINDER drops flags)
            module, _, attr = DELEGATED[argv[0]][0].partition(":")
            return int(getattr(importlib.import_module(module), attr)(argv[1:]))
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
