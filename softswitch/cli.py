"""Command line: `softswitch run` starts everything; `status`, `calls` and `hangup` watch and steer it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from softswitch.config import CHANNELS, Config, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="softswitch", description="softswitch for the 111 hotline")
    parser.add_argument("--config", type=Path, help="YAML file overriding the embedded defaults")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the SIP front, the media workers and the control process")
    sub.add_parser("prompts", help="generate the prompt audio cache with espeak-ng")
    sub.add_parser("check-config", help="validate the configuration and print it")
    creds = sub.add_parser("agent-credentials", help="print an agents.accounts entry for a new agent")
    creds.add_argument("--id", required=True, help="SIP user name and console login, e.g. 1001")
    creds.add_argument("--name", required=True, help="the agent's name as supervisors see it")
    creds.add_argument("--password", help="the console password; read from the terminal when omitted")
    creds.add_argument("--sip-password", help="the phone's SIP password (another secret than the console's); "
                                              "generated and printed once when omitted")
    token = sub.add_parser("api-token", help="print a new HTTP API bearer token and its api_tokens entry")
    token.add_argument("--name", required=True, help="who uses it, e.g. sms-gateway (actor api:<name>)")
    token.add_argument("--channel", choices=CHANNELS, help="may submit cases for this channel (POST /api/cases)")
    token.add_argument("--reports", action="store_true", help="may read case lists and the CSV reports")
    agency_user = sub.add_parser("agency-user", help="print an entry of an agency's users for the agency page")
    agency_user.add_argument("--agency", required=True, help="the agency's id in the configuration, e.g. health")
    agency_user.add_argument("--id", required=True, help="the user's login on the agency page")
    agency_user.add_argument("--name", required=True, help="the user's name as shown in cases' histories")
    agency_user.add_argument("--password", help="read from the terminal when omitted")
    backup = sub.add_parser("backup", help="copy the case store and its recordings into a new folder, while it runs")
    backup.add_argument("directory", type=Path)
    restore = sub.add_parser("restore", help="put a backup back into a data directory that has no store yet")
    restore.add_argument("directory", type=Path)
    watch = [sub.add_parser("status", help="workers, calls, queue, agents and the SIP front of the running switch"),
             sub.add_parser("calls", help="the calls in progress"),
             sub.add_parser("hangup", help="end a call in progress as a normal hang-up (disposition operator_hangup)")]
    watch[2].add_argument("call", help="its CDR id or SIP Call-ID, as `softswitch calls` lists them")
    for watcher in watch:
        watcher.add_argument("--json", action="store_true", help="print the answer as JSON, for scripts")
    retention = sub.add_parser("retention", help="delete now what is past the retention.* periods (the daily "
                                                 "run's rules); --dry-run only says what")
    retention.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")
    retention.add_argument("--list", action="store_true", help="also each item, by id or tracking code")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"softswitch: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command in ("status", "calls", "hangup"):
        return _ask_running(args, config)
    if args.command in ("backup", "restore"):
        return _backup_or_restore(args.command, args.directory, config)
    if args.command == "retention":
        return _retention(config, dry_run=args.dry_run, items=args.list)
    if args.command == "check-config":
        print(config.model_dump_json(indent=2))
        return 0
    if args.command == "agent-credentials":
        return _agent_credentials(args, config.agents.realm)
    if args.command == "api-token":
        return _api_token(args)
    if args.command == "agency-user":
        return _agency_user(args, {agency.id for agency in config.agencies})
    if args.command == "prompts":
        from softswitch.control.languages import prompt_libraries

        for library in prompt_libraries(config).values():
            library.ensure()
        print(f"prompts ready in {config.prompt_cache} ({', '.join(config.prompts.language_codes)})")
        return 0
    from media.prompts import PromptError
    from media.recognizer import ModelError
    from softswitch.control.process import StartRefused, serve

    from storage.errors import StoreDamaged

    try:
        serve(config)
    except (ModelError, PromptError, StartRefused) as exc:
        print(f"softswitch: cannot start: {exc}", file=sys.stderr)
        return 2
    except StoreDamaged as exc:
        print(f"softswitch: cannot start: the case store is damaged ({exc}). Restore the last backup of "
              f"{config.database_path} (with its -wal file, if any), or move the file aside to keep it for "
              "recovery and start again with an empty store.", file=sys.stderr)
        return 3
    return 0


def _backup_or_restore(command: str, directory: Path, config: Config) -> int:
    from storage.backup import BackupError, backup, restore
    from storage.crypto import IdProtector
    from storage.shared_recordings import SharedLayout

    if config.database_url is not None:
        print(f"softswitch: {command} copies the SQLite store only; this one is on PostgreSQL: back it up with "
              "PostgreSQL's own tools (pg_dump -Fc for a copy, pg_basebackup with WAL archiving to restore to a "
              "point in time), and the recordings directory and the key file apart", file=sys.stderr)
        return 2
    key_file = config.under_data(config.security.id_key_file)
    try:
        if command == "backup":
            store = config.recordings_store
            shared = (SharedLayout(store.shared_dir, config.recordings_path, store.host_name)
                      if store.shared_dir is not None else None)
            done = backup(config.database_path, config.data_dir, directory, shared=shared)
            print(f"backup in {done.directory}: {done.cases} cases, {done.files} files; it needs the key "
                  f"id(s) {', '.join(done.key_ids) or '(none)'} of {key_file}, which is not in it: keep a "
                  "copy of that file apart from the backups")
        else:
            if not key_file.exists():
                print(f"softswitch: put the national-ID key file at {key_file} first (it is not in backups)",
                      file=sys.stderr)
                return 2
            done = restore(directory, config.database_path, config.data_dir,
                           IdProtector.from_key_file(key_file).key_ids)
            print(f"restored {done.cases} cases and {done.files} files into {config.data_dir}")
    except (BackupError, OSError, ValueError) as exc:
        print(f"softswitch: {command} failed: {exc}", file=sys.stderr)
        return 2
    return 0


def _ask_running(args: argparse.Namespace, config: Config) -> int:
    """A request to the running control process over its admin socket, printed as tables (or JSON)."""
    from softswitch.control.admin import AdminError, NotRunning, request

    path = config.admin_socket
    try:
        result = request(path, args.command, {"call": args.call} if args.command == "hangup" else None)
    except NotRunning:
        where = f"no socket at {path}" if not path.exists() else f"nothing answers at {path}"
        print(f"softswitch: no softswitch is running for data_dir {config.data_dir} ({where}). Start it with "
              "`softswitch run`, or pass the --config it was started with.", file=sys.stderr)
        return 1
    except AdminError as exc:
        print(f"softswitch: {args.command}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # a timeout, an answer cut short
        print(f"softswitch: {args.command}: no usable answer at {path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif args.command == "status":
        print(_status_text(result))
    elif args.command == "calls":
        print(_calls_text(result))
    else:
        print(f"call {result['cdr_id']} ({result['call_id']}): "
              + (f"hung up, {result['disposition']}" if result["ended"] else "hang-up sent, the call is still ending"))
    return 0


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _status_text(s: dict[str, Any]) -> str:
    engine = s["engine"] or {}
    expected = s["workers_expected"] if s["workers_expected"] is not None else "?"
    lines = [f"softswitch {s['status']}: {len(s['workers'])} of {expected} workers, "
             f"{s['calls_active']} call(s), engine pjsua2 {engine.get('version', '?')}, restarts: "
             + (", ".join(f"{name} {n}" for name, n in sorted(s["restarts"].items())) or "none")]
    if s["problems"]:
        lines += [f"problem: {p}" for p in s["problems"]]
    lines += ["", _table(["worker", "pid", "state", "calls", "capacity"],
                         [[w["id"], w["pid"], w["state"], w["calls"], w["max_calls"]] for w in s["workers"]])]
    queue = s["queue"]
    lines += ["", f"queue: {queue['length']} waiting, longest wait {queue['longest_wait_s']:.0f} s"]
    if queue["callers"]:
        lines.append(_table(["position", "caller", "waited", "offered to"],
                            [[c["position"], c["caller"], f"{c['waited_s']:.0f} s", c["offered_to"]]
                             for c in queue["callers"]]))
    if s["agents"]:
        lines += ["", _table(["agent", "name", "state", "since", "phone"],
                             [[a["id"], a["name"], a["state"] + (f" ({a['pause_reason']})" if a["pause_reason"] else ""),
                               f"{a['seconds_in_state']:.0f} s",
                               {True: "registered", False: "not registered"}.get(a["registered"])]
                              for a in s["agents"]])]
    front = s["front"]
    lines += ["", "front: " + ("up" if front["up"] else "down (no answer from Kamailio)")]
    if front["destinations"]:
        lines.append(_table(["destination", "flags"], [[d["uri"], d["flags"]] for d in front["destinations"]]))
    return "\n".join(lines)


def _calls_text(calls: list[dict[str, Any]]) -> str:
    if not calls:
        return "no calls in progress"
    return _table(["cdr", "call-id", "worker", "age", "state", "agent", "caller"],
                  [[c["cdr_id"], c["call_id"], c["worker"], f"{c['age_s']:.0f} s", c["state"],
                    f"{c['agent']['id']} ({c['agent']['state']})" if c["agent"] else None, c["caller"]]
                   for c in calls]) + f"\n{len(calls)} call(s)"


def _retention(config: Config, *, dry_run: bool, items: bool) -> int:
    """One run now, with the daily job's rules, beside a running softswitch or without one (SQLite WAL)."""
    import asyncio
    import sqlite3
    import time

    from softswitch.control.retention import ROUND_ITEMS, describe, run_once, summary, windows
    from softswitch.domain.persian import time_zone
    from storage.crypto import IdProtector
    from storage.errors import StoreError
    from storage.retention import RetentionPlan, RetentionResult, plan
    from storage.store import open_store

    if not config.retention.configured:
        what = ("retention.recordings_days, retention.calls_days and retention.closed_cases_days are all unset: "
                "everything is kept")
        if dry_run:
            print(f"{what}; nothing would go")
            return 0
        print(f"softswitch: nothing deleted: {what}. Set a period in the config file to delete anything.",
              file=sys.stderr)
        return 2
    key_file = config.under_data(config.security.id_key_file)
    needs = [(key_file, "national-ID key file")]
    if config.database_url is None:  # a PostgreSQL store is the server's to find
        needs.append((config.database_path, "case store"))
    for needed, what in needs:
        if not needed.exists():
            print(f"softswitch: no {what} at {needed}: is --config the softswitch's?", file=sys.stderr)
            return 2
    tz = time_zone(config.office_hours.timezone, "office_hours.timezone")

    def show(due: RetentionPlan) -> None:
        print("\n".join(describe(due, tz, items=items)))

    async def run() -> RetentionResult | None:
        async with open_store(config.store_target, IdProtector.from_key_file(key_file)) as store:
            if dry_run:
                show(await plan(store, windows(config.retention), time.time(), limit=ROUND_ITEMS))
                return None
            return await run_once(store, config.retention, time.time(), on_plan=show)

    try:
        result = asyncio.run(run())
    except (StoreError, sqlite3.Error, OSError) as exc:
        print(f"softswitch: retention failed: {exc}", file=sys.stderr)
        return 2
    if result is None:
        print("dry run: nothing was deleted")
        return 0
    print(summary(result))
    return 1 if result.failures else 0


def _password(args: argparse.Namespace, who: str) -> str | None:
    """The password given, or typed at the terminal; None (after saying why) when it is too short."""
    import getpass

    password: str = args.password or getpass.getpass(f"password for {who} {args.id}: ")
    if len(password) < 8:
        print(f"softswitch: an {who} password needs at least 8 characters", file=sys.stderr)
        return None
    return password


def _agent_credentials(args: argparse.Namespace, realm: str) -> int:
    """The console password is the agent's; the SIP password is the phone's, a separate secret.

    The phone's is kept in the phone's settings in the clear, and its HA1 in the
    front's config authenticates as well as it does: one cracked or copied must
    not open the console (and the other way round).
    """
    import secrets

    import yaml

    from softswitch.web.credentials import hash_password, sip_ha1

    password = _password(args, "agent")
    if password is None:
        return 2
    sip_password: str = args.sip_password or secrets.token_urlsafe(12)
    if len(sip_password) < 8:
        print("softswitch: a SIP password needs at least 8 characters", file=sys.stderr)
        return 2
    if sip_password == password:
        print("softswitch: the SIP password must not be the console password", file=sys.stderr)
        return 2
    entry = {"id": args.id, "name": args.name, "sip_ha1": sip_ha1(args.id, realm, sip_password),
             "console_password": hash_password(password)}
    if not args.sip_password:
        print("# The phone's SIP password, shown only now (the config keeps its digest HA1):")
        print(f"# {sip_password}")
    print(yaml.safe_dump([entry], allow_unicode=True, sort_keys=False), end="")
    return 0


def _agency_user(args: argparse.Namespace, agency_ids: set[str]) -> int:
    """An entry for the users of one of the configured agencies: the scrypt hash only, no password is kept."""
    import yaml

    from softswitch.web.credentials import hash_password

    if args.agency not in agency_ids:
        print(f"softswitch: no agency {args.agency!r} in the configuration (there are: "
              f"{', '.join(sorted(agency_ids))})", file=sys.stderr)
        return 2
    password = _password(args, "agency user")
    if password is None:
        return 2
    print(f"# Add to the users of the agency with id {args.agency} in the config file:")
    print(yaml.safe_dump([{"id": args.id, "name": args.name, "password": hash_password(password)}],
                         allow_unicode=True, sort_keys=False), end="")
    return 0


def _api_token(args: argparse.Namespace) -> int:
    import secrets

    import yaml
    from pydantic import ValidationError

    from softswitch.config import ApiToken
    from softswitch.web.intake import token_sha256

    if args.channel is None and not args.reports:
        print("softswitch: give the token --channel, --reports or both", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    try:
        entry = ApiToken(name=args.name, sha256=token_sha256(token), channel=args.channel, reports=args.reports)
    except ValidationError as exc:
        print(f"softswitch: bad --name: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    print("# The token, shown only now; the client sends it as \"Authorization: Bearer <token>\":")
    print(token)
    print("# Add to api_tokens in the config file (it keeps only the token's SHA-256):")
    print(yaml.safe_dump([entry.model_dump()], allow_unicode=True, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
