"""The prompt library of every language a deployment offers, as the config names them."""

from __future__ import annotations

import logging

from ivr.follow_up import agency_prompt
from media.prompts import PromptLibrary
from softswitch.config import Config, load_prompt_texts

log = logging.getLogger("softswitch.languages")


def prompt_libraries(config: Config) -> dict[str, PromptLibrary]:
    """Each offered language's prompts by code, the first language first.

    Agencies are named in the topic menu and follow-up answers, so their names
    are prompts: in the first language their ``name``, in another their
    ``spoken`` name for it, else the first language's. Another language's texts
    may leave prompts out: those are played from the first language, and the
    start says how many (agencies' names aside).
    """
    first, *others = config.prompts.languages
    texts = load_prompt_texts(first.texts) | {agency_prompt(a.id): a.name for a in config.agencies}
    default = PromptLibrary(texts, config.prompt_cache, first.override_dir, voice=first.voice, numbers=first.numbers)
    libraries = {first.code: default}
    for language in others:
        own = load_prompt_texts(language.texts) | {agency_prompt(a.id): a.spoken[language.code]
                                                   for a in config.agencies if language.code in a.spoken}
        if missing := sorted(set(texts) - set(own) - {agency_prompt(a.id) for a in config.agencies}):
            log.info("language %s: %d prompt(s) played in %s: %s", language.code, len(missing), first.code,
                     ", ".join(missing))
        libraries[language.code] = PromptLibrary(own, config.prompt_cache, language.override_dir,
                                                 voice=language.voice, numbers=language.numbers, fallback=default)
    return libraries
