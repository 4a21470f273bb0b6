"""Command line: `softswitch run` starts everything; `softswitch prompts` builds the prompt cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from softswitch.config import ConfigError, load_config, load_prompt_texts


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
    creds.add_argument("--password", help="read from the terminal when omitted")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"softswitch: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(config.model_dump_json(indent=2))
        return 0
    if args.command == "agent-credentials":
        return _agent_credentials(args, config.agents.realm)
    if args.command == "prompts":
        from media.prompts import PromptLibrary

        library = PromptLibrary(load_prompt_texts(config.prompts.texts), config.prompt_cache,
                                config.prompts.override_dir, voice=config.prompts.voice)
        library.ensure()
        print(f"prompts ready in {config.prompt_cache}")
        return 0
    from media.prompts import PromptError
    from media.recognizer import ModelError
    from softswitch.control import serve

    try:
        serve(config)
    except (ModelError, PromptError) as exc:
        print(f"softswitch: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def _agent_credentials(args: argparse.Namespace, realm: str) -> int:
    import getpass

    import yaml

    from softswitch.credentials import hash_password, sip_ha1

    password = args.password or getpass.getpass(f"password for agent {args.id}: ")
    if len(password) < 8:
        print("softswitch: an agent password needs at least 8 characters", file=sys.stderr)
        return 2
    entry = {"id": args.id, "name": args.name, "sip_ha1": sip_ha1(args.id, realm, password),
             "console_password": hash_password(password)}
    print(yaml.safe_dump([entry], allow_unicode=True, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
