"""Languages and topics a deployment offers, the agents who serve them, and the prompt libraries built from it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from ivr.follow_up import agency_prompt
from softswitch.config import CONFIG_DIR, ConfigError, load_config
from softswitch.control.languages import prompt_libraries

pytestmark = pytest.mark.unit

ENGLISH = {"code": "en", "label": "انگلیسی", "texts": str(CONFIG_DIR / "prompts.en.yaml"), "voice": "en-us",
           "numbers": "en"}


def agent(agent_id: str, **more: Any) -> dict[str, Any]:
    return {"id": agent_id, "name": agent_id, "sip_ha1": "0" * 32, "console_password": "scrypt$x", **more}


def test_one_language_gives_no_skills_and_the_agents_languages_are_checked(tmp_path: Path) -> None:
    config = load_config(overrides={"data_dir": str(tmp_path), "agents.accounts": [agent("1001")]})
    assert config.prompts.language_codes == ["fa"] and config.agent_skills == {}
    with pytest.raises(ConfigError, match="agent 1001 speaks en, which prompts do not offer"):
        load_config(overrides={"agents.accounts": [agent("1001", languages=["en"])]})


def test_several_languages_give_each_agent_its_languages_or_the_first(tmp_path: Path) -> None:
    config = load_config(overrides={
        "data_dir": str(tmp_path), "prompts.other_languages": [ENGLISH],
        "agents.accounts": [agent("1001"), agent("1002", languages=["en", "fa"]), agent("1003", languages=["en"])]})
    assert [language.code for language in config.prompts.languages] == ["fa", "en"]
    assert config.agent_skills == {"1001": {"lang:fa"}, "1002": {"lang:en", "lang:fa"}, "1003": {"lang:en"}}


def test_a_language_offered_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="languages offered twice: fa"):
        load_config(overrides={"prompts.other_languages": [{**ENGLISH, "code": "fa"}]})


def test_the_libraries_follow_the_config_and_another_language_falls_back_to_the_first(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(overrides={"data_dir": str(tmp_path), "prompts.other_languages": [ENGLISH]})
    with caplog.at_level(logging.INFO, logger="softswitch.languages"):
        libraries = prompt_libraries(config)
    assert list(libraries) == ["fa", "en"]
    persian, english = libraries["fa"], libraries["en"]
    # Agencies are named in the first language; English says so for what it lacks, agencies aside.
    roads = agency_prompt("roads")
    persian.ensure([roads])
    assert english.path(roads) == persian.path(roads) and not english.has_own(roads)
    assert "language en: 3 prompt(s) played in fa: hold_music, language_choice_end, topic_press_end" in caplog.text
    for library in libraries.values():
        library.ensure(["greeting"])
    assert english.path("greeting") != persian.path("greeting")  # its own words, its own voice


def test_topics_name_configured_agencies_and_agents_without_agencies_take_every_topic(tmp_path: Path) -> None:
    config = load_config(overrides={
        "data_dir": str(tmp_path), "queue.topics": ["roads", "health"],
        "agents.accounts": [agent("1001"), agent("1002", agencies=["roads"])]})
    assert config.agent_skills == {"1001": {"agency:roads", "agency:health"}, "1002": {"agency:roads"}}
    with pytest.raises(ConfigError, match="queue.topics names agencies that are not configured: tax"):
        load_config(overrides={"queue.topics": ["tax"]})
    with pytest.raises(ConfigError, match="agent 1001 handles agencies that are not configured: tax"):
        load_config(overrides={"agents.accounts": [agent("1001", agencies=["tax"])]})
    # Languages and topics together: both kinds of skill.
    config = load_config(overrides={"data_dir": str(tmp_path), "queue.topics": ["roads"],
                                    "prompts.other_languages": [ENGLISH],
                                    "agents.accounts": [agent("1001", languages=["en"])]})
    assert config.agent_skills == {"1001": {"lang:en", "agency:roads"}}


def test_agent_ids_that_name_something_else_are_refused() -> None:
    with pytest.raises(ConfigError, match="agent id queue is reserved"):
        load_config(overrides={"agents.accounts": [agent("queue")]})
    with pytest.raises(ConfigError, match="agent id 111 is the service number"):
        load_config(overrides={"agents.accounts": [agent("111")]})


def test_an_agency_named_for_another_language_is_said_in_it_and_others_in_the_first(tmp_path: Path) -> None:
    agencies: list[dict[str, Any]] = [{"id": "roads", "name": "وزارت راه و شهرسازی",
                                       "spoken": {"en": "the Ministry of Roads"}},
                                      {"id": "health", "name": "وزارت بهداشت"}]
    config = load_config(overrides={"data_dir": str(tmp_path), "prompts.other_languages": [ENGLISH],
                                    "agencies": agencies})
    libraries = prompt_libraries(config)
    persian, english = libraries["fa"], libraries["en"]
    roads, health = agency_prompt("roads"), agency_prompt("health")
    persian.ensure([roads, health])
    english.ensure([roads])  # its own words, in its own voice
    assert english.has_own(roads) and english.path(roads) != persian.path(roads)
    assert not english.has_own(health) and english.path(health) == persian.path(health)
    with pytest.raises(ConfigError, match="agency roads has spoken names in az"):
        load_config(overrides={"prompts.other_languages": [ENGLISH],
                               "agencies": [{**agencies[0], "spoken": {"az": "Yollar nazirliyi"}}]})
    with pytest.raises(ConfigError, match="spoken names in fa"):  # the first language says `name`
        load_config(overrides={"agencies": [{**agencies[0], "spoken": {"fa": "راه"}}]})
