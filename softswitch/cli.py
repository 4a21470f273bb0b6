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
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"softswitch: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(config.model_dump_json(indent=2))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
