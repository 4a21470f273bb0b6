"""Softswitch configuration: embedded defaults, optionally overridden by a YAML file, validated on load."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from softswitch.domain.office_hours import OfficeHours

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"


class ConfigError(Exception):
    """The configuration file cannot be used; the message says which field and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SipConfig(_Section):
    listen: str = "127.0.0.1"
    port: int = Field(5060, ge=1, le=65535)
    service_number: str = Field("111", pattern=r"^[0-9]+$")
    trunk_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # A call whose far end should be sending RTP and has sent none this long is a
    # dead phone or trunk: the call is ended (0: never). Hold is not silence.
    rtp_timeout_s: float = Field(60.0, ge=0)
    # RFC 4028 session timers, used when the far end supports them (0: off; else at least 90).
    session_expires_s: int = Field(1800, ge=0)
    # host:port of the trunk the front sends the softswitch's own calls to numbers (callbacks, transfers
    # to an agency's number), as sip:<number>@outbound_trunk; null: no calls out.
    outbound_trunk: str | None = Field(None, pattern=r"^[A-Za-z0-9.:\[\]-]+:[0-9]{1,5}$")

    @field_validator("session_expires_s")
    @classmethod
    def _at_least_min_se(cls, value: int) -> int:
        if 0 < value < 90:
            raise ValueError("session timers need at least 90 s (RFC 4028 Min-SE), or 0 for none")
        return value

    @field_validator("trunk_allow")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
        return value


class WorkersConfig(_Section):
    """Media worker processes; what is left null is sized from the machine and the engine (``plan_workers``)."""

    count: int | None = Field(None, ge=1, le=1000)
    # Calls one worker may hold: a caller's call and, when bridged, the agent's leg take one each.
    # Null: all the engine holds (1,000 with the server build, 4 with the PyPI wheel).
    max_calls: int | None = Field(None, ge=1)
    host: str = "127.0.0.1"
    base_port: int = Field(5070, ge=1024, le=65000)
    rtp_base_port: int = Field(20000, ge=1024, le=65000)
    # RTP and RTCP ports of one worker; null: two per call slot and some headroom.
    rtp_ports_per_worker: int | None = Field(None, ge=8)
    # Longest wait of a worker's event loop; SIP packets and control commands wake it at once.
    poll_ms: int = Field(200, ge=1, le=1000)
    # Restart a worker after this many calls (0: never). Null: never with the
    # server build (pjproject >= 2.16 fixed the churn leaks), 2000 with the PyPI
    # wheel, whose 2.15.1 leaks bridge slots until every new call gets 488.
    recycle_after_calls: int | None = Field(None, ge=0)
    restart_backoff_s: float = Field(0.5, ge=0)


def port_conflict(sip_port: int, w: WorkersConfig, count: int, rtp_ports_per_worker: int) -> str | None:
    """Why these worker sizes cannot be laid out on the port space, or None."""
    sip_ports = range(w.base_port, w.base_port + count)
    if sip_port in sip_ports:
        return f"sip.port {sip_port} falls inside the worker SIP ports {w.base_port}..{sip_ports.stop - 1}"
    rtp_end = w.rtp_base_port + count * rtp_ports_per_worker
    if rtp_end > 65535:
        return f"{count} workers x {rtp_ports_per_worker} RTP ports from {w.rtp_base_port} overflow port 65535"
    if w.rtp_base_port < sip_ports.stop and rtp_end > w.base_port:
        return "worker RTP ports overlap worker SIP ports"
    return None


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8111, ge=0, le=65535)
    # HTTPS: a PEM certificate (chain) and its key; relative paths are taken from the working directory.
    # With them the softswitch serves HTTPS only, and the session cookie is Secure.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Behind a reverse proxy that terminates TLS, the cookie must still be Secure: say so here.
    secure_cookies: bool = False
    # A console or agency session ends after this long without a request, and in any case this long after
    # its login (kept in the store: valid on every host and across restarts until then).
    session_idle_s: float = Field(8 * 3600.0, ge=60)
    session_lifetime_s: float = Field(12 * 3600.0, ge=60)

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        # Loaded once here so that a missing file or a key that does not match the certificate is one line
        # of "bad configuration" (also from check-config), not a traceback when the site starts.
        try:
            self.ssl_context()
        except OSError as exc:  # ssl.SSLError is an OSError
            raise ValueError(f"cannot serve HTTPS with tls_cert_file and tls_key_file: {exc}") from None
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def cookies_secure(self) -> bool:
        """Session cookies carry Secure whenever browsers reach the pages over HTTPS, here or at a proxy."""
        return self.tls or self.secure_cookies

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (TLS 1.2 or later), or None for plain HTTP; a certificate or key that
        cannot be read, or that do not match, raises OSError or ssl.SSLError naming the problem."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context


class IvrConfig(_Section):
    """Timers of the recorded-message flow, in seconds."""

    id_max_s: float = Field(20.0, gt=0)
    id_silence_s: float = Field(1.5, gt=0)
    id_no_input_s: float = Field(10.0, gt=0)
    id_digits: int = 10
    id_attempts: int = Field(3, ge=1, le=5)
    confirm_timeout_s: float = Field(6.0, gt=0)
    menu_attempts: int = Field(3, ge=1, le=5)
    menu_timeout_s: float = Field(6.0, gt=0)
    message_max_s: float = Field(120.0, gt=0)
    message_silence_s: float = Field(3.0, gt=0)
    message_no_input_s: float = Field(15.0, gt=0)
    tracking_code_repeats: int = Field(2, ge=1, le=5)
    # How long an answered call may wait for the caller's ACK before it is given
    # up: RFC 3261's Timer H (64 x T1), after which PJSIP itself ends the call.
    # A busy trunk or front can be seconds late; that is no reason to drop a caller.
    answer_timeout_s: float = Field(32.0, gt=0)


def _in_project(path: Path) -> Path:
    """Files shipped with the softswitch may be named relative to the project."""
    return path if path.is_absolute() else PROJECT_ROOT / path


LANGUAGE_CODE = r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$"
# How a language says a number from its prompts (media.prompts.cardinal_prompt_names, NUMBER_STYLES).
NumberStyle = Literal["fa", "en", "plain"]


class LanguageConfig(_Section):
    """A further language callers may choose: its prompt texts, its espeak-ng voice, its recorded prompts."""

    code: str = Field(pattern=LANGUAGE_CODE)
    label: str = Field(min_length=1)  # its name as agents read it on the console, in Persian
    texts: Path
    voice: str = Field(min_length=1)
    override_dir: Path | None = None
    numbers: NumberStyle = "plain"

    _texts_in_project = field_validator("texts")(_in_project)


class PromptsConfig(_Section):
    # The first language: every call's language unless others are offered, and the fallback of
    # any prompt another language's texts lack.
    language: str = Field("fa", pattern=LANGUAGE_CODE)
    label: str = Field("فارسی", min_length=1)
    texts: Path = CONFIG_DIR / "prompts.fa.yaml"
    cache_dir: Path = Path("prompts")
    override_dir: Path | None = None
    voice: str = "fa"
    numbers: NumberStyle = "fa"
    # With any, a language menu plays first: key 1 for the first language, 2.. for these in order.
    other_languages: tuple[LanguageConfig, ...] = Field((), max_length=8)
    # Speaks agencies' written answers: "espeak-ng:<voice>" or "package.module:Class" (media/synth.py).
    synthesizer: str = "espeak-ng:fa"

    _texts_in_project = field_validator("texts")(_in_project)

    @model_validator(mode="after")
    def _distinct_languages(self) -> PromptsConfig:
        codes = self.language_codes
        if len(set(codes)) != len(codes):
            raise ValueError(f"languages offered twice: {', '.join(sorted(c for c in codes if codes.count(c) > 1))}")
        return self

    @property
    def languages(self) -> tuple[LanguageConfig, ...]:
        """Every language offered, the first one first."""
        first = LanguageConfig(code=self.language, label=self.label, texts=self.texts, voice=self.voice,
                               override_dir=self.override_dir, numbers=self.numbers)
        return (first, *self.other_languages)

    @property
    def language_codes(self) -> list[str]:
        return [self.language, *(language.code for language in self.other_languages)]


class RecognizerConfig(_Section):
    """Spoken-digit recognition of national IDs; without a model the keypad and the tape serve."""

    model_dir: Path | None = None


class KamailioConfig(_Section):
    binary: str = "kamailio"
    template: Path = CONFIG_DIR / "kamailio.cfg.j2"
    # Transactions live here until their wait timer ends: 64 MB ran out at ~350
    # calls/s. Only the pages used count against memory.
    shared_memory_mb: int = Field(256, ge=16)
    private_memory_mb: int = Field(8, ge=2)
    children: int = Field(4, ge=1)
    # How long the front waits for a worker's first answer (its 100 Trying) before trying
    # the next: a dead worker is also noticed by the 1 s probes, and a busy one
    # answering late must not have its call offered to a second worker as well.
    failover_timeout_ms: int = Field(3000, ge=100)
    # Floods: a source sending more than flood_requests requests (REGISTERs aside)
    # in flood_window_s is dropped for flood_block_s. Media workers are never
    # counted; trunks (sip.trunk_allow) count against trunk_flood_requests, 0 for
    # no limit: a trunk carries every caller, and call slots bound what it takes.
    flood_window_s: int = Field(2, ge=1)
    flood_requests: int = Field(50, ge=1)
    trunk_flood_requests: int = Field(0, ge=0)
    flood_block_s: int = Field(60, ge=1)
    # REGISTER guessing: this many failed authentications from one source, none
    # further apart than register_failure_window_s, drop its REGISTERs for register_block_s.
    register_failures: int = Field(10, ge=1)
    register_failure_window_s: int = Field(300, ge=1)
    register_block_s: int = Field(300, ge=1)
    # With a PostgreSQL database_url the fronts of all hosts keep the agents'
    # registrations in its `location` table; each front needs a number of its own
    # there (Kamailio's server_id): it probes and drops only the phones that
    # registered with it. Give every host sharing the database a different one.
    server_id: int = Field(0, ge=0, le=2**31 - 1)

    _template_in_project = field_validator("template")(_in_project)


class OfficeHoursConfig(_Section):
    """When live agents answer, in local time: a weekly schedule and holidays.

    ``weekly`` maps a weekday name (the Iranian week starts on Saturday) to
    ranges "HH:MM-HH:MM"; a day not listed is closed. ``holidays`` are dates,
    Jalali ("1405-01-01") or Gregorian ("2026-03-21"), on which live service is closed.
    """

    timezone: str = "Asia/Tehran"
    weekly: dict[str, tuple[str, ...]] = {
        "saturday": ("08:00-16:00",), "sunday": ("08:00-16:00",), "monday": ("08:00-16:00",),
        "tuesday": ("08:00-16:00",), "wednesday": ("08:00-16:00",), "thursday": ("08:00-12:00",),
    }
    holidays: tuple[str, ...] = ()

    @field_validator("holidays", mode="before")
    @classmethod
    def _dates_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2026-03-21 as a date; take it as the text it was.
        return [str(v) if isinstance(v, (date, datetime)) else v for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _parses(self) -> OfficeHoursConfig:
        OfficeHours.from_config(self)
        return self


class AgentAccount(_Section):
    """One agent: SIP user name and console login. ``softswitch agent-credentials`` prints an entry."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    name: str = Field(min_length=1)
    sip_ha1: str = Field(pattern=r"^[0-9a-f]{32}$", description="MD5(id:realm:password), as SIP digest needs")
    console_password: str = Field(pattern=r"^scrypt\$", description="scrypt hash of the console password")
    supervisor: bool = False  # may open the supervisor view
    # The languages the agent takes calls in (codes of prompts.language and other_languages);
    # none: the first language only.
    languages: tuple[str, ...] = ()
    # The agencies whose callers the agent takes when queue.topics asks callers to choose one;
    # none: all of them.
    agencies: tuple[str, ...] = ()


class AgentsConfig(_Section):
    realm: str = Field("softswitch-111", pattern=r"^[A-Za-z0-9_.-]+$")
    accounts: tuple[AgentAccount, ...] = ()
    ring_timeout_s: float = Field(15.0, gt=0)
    wrap_up_s: float = Field(30.0, ge=0)
    registration_expires_s: int = Field(300, ge=30)
    # The front probes every registered phone this often (OPTIONS) and drops one
    # silent for keepalive_timeout_s: its agent is no longer offered calls.
    keepalive_interval_s: int = Field(10, ge=1)
    keepalive_timeout_s: int = Field(30, ge=2)
    # How often the control process reads the front's registrations.
    registration_poll_s: float = Field(2.0, gt=0)

    @field_validator("accounts")
    @classmethod
    def _unique(cls, value: tuple[AgentAccount, ...]) -> tuple[AgentAccount, ...]:
        ids = [a.id for a in value]
        if len(ids) != len(set(ids)):
            raise ValueError("agent ids must be unique")
        return value


class CallbackConfig(_Section):
    """Callback instead of waiting: offered beside the recorded message while the queue is busy. The caller
    keeps their place; when it is their turn and an agent is free, the softswitch calls them through the
    SIP front, which sends the call to ``sip.outbound_trunk``, and connects them to that agent."""

    enabled: bool = False
    key: str = Field("3", pattern=r"^[0-9*#]$")
    # A number the softswitch will call: the caller's own (caller ID) or one they key in.
    number_pattern: str = r"^0[1-9][0-9]{9}$"
    attempts: int = Field(3, ge=1, le=10)
    retry_after_s: float = Field(300.0, gt=0)
    ring_timeout_s: float = Field(30.0, gt=0)

    @field_validator("number_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    def callable_number(self, number: str) -> bool:
        return re.fullmatch(self.number_pattern, number) is not None


class QueueConfig(_Section):
    """The live queue (ACD) and when a waiting caller is offered the recorded message instead."""

    max_length: int = Field(20, ge=1)
    max_wait_s: float = Field(300.0, gt=0)
    max_estimated_wait_s: float = Field(180.0, gt=0)
    announce_every_s: float = Field(30.0, gt=0)
    # Estimated wait: mean handling time of the last N calls (before any, the default).
    handle_time_samples: int = Field(20, ge=1)
    default_handle_time_s: float = Field(180.0, gt=0)
    service_level_s: float = Field(20.0, gt=0)
    overflow_key: str = Field("2", pattern=r"^[0-9*#]$")
    # A caller who needs a skill (the language they chose) waits this long for an agent who has it,
    # then takes any agent.
    skill_wait_s: float = Field(60.0, ge=0)
    # A repeat caller (the person the call is about has a case still received or referred, opened
    # within repeat_caller_days) is queued ahead of other callers with this priority; 0: no priority.
    repeat_caller_priority: int = Field(0, ge=0, le=9)
    repeat_caller_days: float = Field(30.0, gt=0)
    # Agency ids a caller for an agent chooses among (key 1 the first), to reach an agent who
    # handles that agency's matters (agents' `agencies`); none: no topic menu.
    topics: tuple[str, ...] = Field((), max_length=9)
    callback: CallbackConfig = CallbackConfig()

    @model_validator(mode="after")
    def _keys_differ(self) -> QueueConfig:
        if self.callback.enabled and self.callback.key == self.overflow_key:
            raise ValueError("queue.callback.key and queue.overflow_key must differ")
        return self


class AgencyUser(_Section):
    """A person of an agency who answers the cases referred to it, on the agency page."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    name: str = Field(min_length=1)
    password: str = Field(pattern=r"^scrypt\$", description="scrypt hash (softswitch agency-user prints one)")


class Agency(_Section):
    id: str = Field(pattern=r"^[a-z0-9_-]{1,40}$")
    name: str = Field(min_length=1)
    users: tuple[AgencyUser, ...] = ()
    # The agency's own line, which an agent may hand a caller to (through sip.outbound_trunk); null: none.
    phone: str | None = Field(None, pattern=r"^\+?[0-9]{3,15}$")
    # Its name as callers of another language hear it (the topic menu, a follow-up), by language code;
    # a language not named here hears `name`.
    spoken: dict[str, str] = {}


CHANNELS = ("phone", "sms", "letter", "web")


class ApiToken(_Section):
    """A bearer token of the HTTP API; only its SHA-256 is kept (softswitch api-token prints both)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    channel: str | None = Field(None, description="may submit cases through POST /api/cases for this channel")
    reports: bool = Field(False, description="may read GET /api/cases and the CSV exports")

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, value: str | None) -> str | None:
        if value is not None and value not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}")
        return value


class CasesConfig(_Section):
    """Case rules shared by every channel."""

    # A request is a duplicate of an open case of the same subject, agency and category opened within this window.
    duplicate_window_days: float = Field(30.0, gt=0)


class FollowUpConfig(_Section):
    """Follow-up by tracking code in the IVR (menu option 3)."""

    code_attempts: int = Field(3, ge=1, le=5)
    # Wrong code or ID from one number: after this many in the window, follow-up is refused for a while.
    max_failures: int = Field(5, ge=1)
    failure_window_s: float = Field(3600.0, gt=0)


class SurveyConfig(_Section):
    """The post-call survey: the caller may rate the service 1 to 5 on the keypad.

    ``offer_after``: ``agent`` once the agent has left a live call (the caller still
    on the line), ``follow_up`` once the caller heard an agency's answer.
    """

    enabled: bool = True
    wait_s: float = Field(8.0, gt=0, le=60, description="how long the question waits for a key")
    offer_after: tuple[Literal["agent", "follow_up"], ...] = ("agent", "follow_up")


class RetentionConfig(_Section):
    """How long recordings, CDRs and closed cases are kept (storage/retention.py has the rules).

    Unset (the default) keeps that kind forever: a national hotline's records are
    evidence, and only the operator's config may say otherwise. ``run_at`` is
    when the daily run starts, on the hotline's clock (``office_hours.timezone``).
    """

    recordings_days: float | None = Field(None, gt=0)
    calls_days: float | None = Field(None, gt=0)
    closed_cases_days: float | None = Field(None, gt=0)
    run_at: str = Field("03:30", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, 24-hour clock")

    @field_validator("run_at", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 03:30 as the base-60 number 210.
        if isinstance(value, int):
            raise ValueError("write run_at in quotes, e.g. '03:30' (unquoted, YAML reads it as a number)")
        return value

    @property
    def configured(self) -> bool:
        """Whether anything is ever deleted: at least one kind has a retention period."""
        return any(days is not None for days in (self.recordings_days, self.calls_days, self.closed_cases_days))

    @property
    def run_time(self) -> time:
        hour, minute = self.run_at.split(":")
        return time(int(hour), int(minute))


_LOOPBACK_HOSTS = ("localhost",)


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SmsConfig(_Section):
    """SMS of tracking codes (and of "your answer is ready") through the operator's SMS gateway.

    ``url`` is an HTTP endpoint taking the JSON body of README "SMS of the tracking code"
    with ``Authorization: Bearer <token>``; unset (the default), no SMS is
    offered or sent. HTTPS is required beyond loopback: the body holds the
    caller's number and the header the token. ``token`` is a secret, printed
    as stars by check-config and never logged.
    """

    url: str | None = None
    token: SecretStr | None = None
    sender: str = Field("111", pattern=r"^[A-Za-z0-9+]{1,20}$", description="the sender line or name")
    # Whether the IVR offers the SMS after reading back a tracking code (with a url set).
    offer: bool = True
    # How long the caller has to press 1 after the offer.
    offer_wait_s: float = Field(5.0, gt=0, le=30)
    timeout_s: float = Field(10.0, gt=0, le=120)
    # Attempts per message in all; a retry waits retry_initial_s, doubling up to retry_max_s.
    attempts: int = Field(5, ge=1, le=20)
    retry_initial_s: float = Field(30.0, gt=0)
    retry_max_s: float = Field(900.0, gt=0)
    # How often the outbox is read for messages due (a message queued on this host wakes it at once).
    poll_interval_s: float = Field(2.0, gt=0, le=60)
    batch: int = Field(10, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _gateway_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s):// URL naming a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials: the gateway's token goes in sms.token")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError("must be https:// beyond loopback: the body holds callers' numbers and the header "
                             "the token")
        return value

    @field_validator("token")
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        # The messages never quote the token.
        if value is not None and not re.fullmatch(r"[\x21-\x7e]{8,4096}", value.get_secret_value()):
            raise ValueError("must be 8 or more printable ASCII characters without spaces")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SmsConfig:
        if self.url is not None and self.token is None:
            raise ValueError("a gateway url needs its bearer token (sms.token)")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        return self

    @property
    def enabled(self) -> bool:
        """Whether messages are sent at all: a gateway is configured."""
        return self.url is not None

    @property
    def offered(self) -> bool:
        """Whether the IVR offers callers the SMS of their tracking code."""
        return self.enabled and self.offer


class SecurityConfig(_Section):
    id_key_file: Path = Path("keys/national_id.json")


class HealthConfig(_Section):
    """When the switch stops taking new calls because it could not keep them: the trunks get 503 and
    fail over, calls in progress go on. Checked every ``check_interval_s``."""

    # Free space under the data and recordings directories below this: a new call's message
    # and case might not be written. Recordings in progress keep the rest.
    min_free_mb: float = Field(256.0, ge=0)
    check_interval_s: float = Field(2.0, gt=0)


class LoggingConfig(_Section):
    """Log lines of the control process and the workers, on stderr: ``text`` for people, ``json`` (one
    object a line, each call's Call-ID, CDR id and worker as fields) for log shippers."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class RecordingsStoreConfig(_Section):
    """Where closed recordings are kept for every host to read (README, "The shared recordings store").

    Unset ``shared_dir``: recordings stay in the local recordings directory, as
    before. Set: each recording, once its row is stored, is copied to
    ``<shared_dir>/<host>/<path under recordings_dir>``, checked against its
    sha256, the row pointed at the copy and only then the local file removed.
    """

    # A directory on the shared filesystem (NFS, CephFS), not its mount point: an unmounted share
    # then shows as a missing directory instead of taking copies on the local disk underneath.
    shared_dir: Path | None = None
    # The folder this host's copies are filed under; null: the machine's host name.
    host: str | None = Field(None, pattern=HOST_NAME_PATTERN)
    copies_in_parallel: int = Field(2, ge=1, le=16)
    # A failed copy is tried again after retry_initial_s, doubling up to retry_max_s.
    retry_initial_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)
    # /api/health names the backlog once a recording has waited this long for its copy.
    backlog_alarm_s: float = Field(300.0, ge=0)

    @field_validator("shared_dir")
    @classmethod
    def _usable(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        if value.exists():
            if not value.is_dir():
                raise ValueError(f"{value} is not a directory")
            if os.path.ismount(value):
                raise ValueError(f"{value} is a mount point: name a directory inside the mounted filesystem, so "
                                 "that an unmounted share is a missing directory rather than the local disk")
            return value
        # Missing (a share down at start is a backlog, not a reason to refuse): it must be creatable.
        parent = next(p for p in value.parents if p.exists())
        if not parent.is_dir():
            raise ValueError(f"{value} cannot be created: {parent} is not a directory")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RecordingsStoreConfig:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        if self.shared_dir is not None and not re.fullmatch(HOST_NAME_PATTERN, self.host_name):
            raise ValueError(f"the machine's host name {self.host_name!r} cannot name a folder: set host")
        return self

    @property
    def host_name(self) -> str:
        """The folder of this host's copies: ``host``, else the first label of the machine's host name."""
        return self.host if self.host is not None else machine_host_name()


def machine_host_name() -> str:
    """The first label of the machine's host name."""
    return socket.gethostname().split(".")[0]


class ClusterConfig(_Section):
    """Several hosts on one PostgreSQL store (README, "Several hosts"); with SQLite there is one host and
    this section is not used.

    Each host writes its heartbeat every ``heartbeat_s``; a host whose last heartbeat is older than
    ``host_timeout_s`` is dead, and one survivor closes its calls (``host_lost``) and files their cases.
    """

    # This host's name in the store, on its CDRs and (by default) its folder in the shared recordings
    # directory; null: the machine's host name. Two hosts must never share one.
    name: str | None = Field(None, pattern=HOST_NAME_PATTERN)
    heartbeat_s: float = Field(1.0, gt=0, le=60)
    host_timeout_s: float = Field(5.0, gt=0)
    # Where the other hosts reach this host's web server, to relay an agent's console requests for a call
    # of this host (README, "Several hosts"); null: http(s)://<http.host>:<http.port>, the machine's name
    # when it listens on every address.
    console_url: str | None = Field(None, pattern=r"^https?://[^/?#\s]+/?$")
    # CA bundle to check the other hosts' HTTPS certificates by (an internal CA); null: the system's.
    peer_ca_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        # A host must miss at least two heartbeats in a row before it is taken for dead.
        if self.host_timeout_s < 2 * self.heartbeat_s:
            raise ValueError("host_timeout_s must be at least twice heartbeat_s")
        return self

    @property
    def host_name(self) -> str:
        return self.name if self.name is not None else machine_host_name()


class Config(_Section):
    data_dir: Path = Path("var")
    # The case store: the SQLite file `database`, unless `database_url` names a PostgreSQL database
    # (postgresql://user:password@host:5432/name?sslmode=verify-full). Secret: printed as stars.
    database: Path = Path("softswitch.db")
    database_url: SecretStr | None = None
    recordings_dir: Path = Path("recordings")
    drain_timeout_s: float = Field(30.0, ge=0)
    sip: SipConfig = SipConfig()
    workers: WorkersConfig = WorkersConfig()
    http: HttpConfig = HttpConfig()
    ivr: IvrConfig = IvrConfig()
    prompts: PromptsConfig = PromptsConfig()
    recognizer: RecognizerConfig = RecognizerConfig()
    kamailio: KamailioConfig = KamailioConfig()
    security: SecurityConfig = SecurityConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()
    office_hours: OfficeHoursConfig = OfficeHoursConfig()
    agents: AgentsConfig = AgentsConfig()
    queue: QueueConfig = QueueConfig()
    agencies: tuple[Agency, ...] = (
        Agency(id="municipality", name="شهرداری"),
        Agency(id="health", name="وزارت بهداشت، درمان و آموزش پزشکی"),
        Agency(id="social-security", name="سازمان تأمین اجتماعی"),
        Agency(id="roads", name="وزارت راه و شهرسازی"),
        Agency(id="energy", name="وزارت نیرو"),
        Agency(id="education", name="وزارت آموزش و پرورش"),
    )
    categories: tuple[str, ...] = ("شکایت", "درخواست", "پیشنهاد", "پرسش", "گزارش تخلف")
    api_tokens: tuple[ApiToken, ...] = ()
    cases: CasesConfig = CasesConfig()
    follow_up: FollowUpConfig = FollowUpConfig()
    survey: SurveyConfig = SurveyConfig()
    retention: RetentionConfig = RetentionConfig()
    recordings_store: RecordingsStoreConfig = RecordingsStoreConfig()
    sms: SmsConfig = SmsConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="before")
    @classmethod
    def _recordings_folder_is_the_host(cls, data: Any) -> Any:
        # The shared recordings folder of a host is named after it, unless recordings_store.host says otherwise.
        if isinstance(data, dict) and isinstance(data.get("cluster"), dict) and data["cluster"].get("name"):
            store = data.get("recordings_store")
            if store is None or (isinstance(store, dict) and store.get("host") is None):
                data = {**data, "recordings_store": {**(store or {}), "host": data["cluster"]["name"]}}
        return data

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        # The messages never quote the URL: it may hold a password.
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL; leave it unset to keep the SQLite file `database`")
        try:
            parts.port
        except ValueError:
            raise ValueError("the port is not a number from 0 to 65535") from None
        if not (parts.hostname or "host=" in parts.query):
            raise ValueError("names no server host")
        if not parts.path.strip("/"):
            raise ValueError("names no database (postgresql://host/NAME)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        # Sizes left null are checked again once plan_workers has chosen them.
        w = self.workers
        problem = port_conflict(self.sip.port, w, w.count or 1, w.rtp_ports_per_worker or 8)
        if problem:
            raise ValueError(problem)
        if any(a.id == self.sip.service_number for a in self.agents.accounts):
            raise ValueError(f"agent id {self.sip.service_number} is the service number")
        if any(a.id == "queue" for a in self.agents.accounts):
            raise ValueError("agent id queue is reserved: it names the queue a call is handed back to")
        offered = self.prompts.language_codes
        agencies = [agency.id for agency in self.agencies]
        if unknown := [topic for topic in self.queue.topics if topic not in agencies]:
            raise ValueError(f"queue.topics names agencies that are not configured: {', '.join(unknown)}")
        if len(set(self.queue.topics)) != len(self.queue.topics):
            raise ValueError("queue.topics names an agency twice")
        for agency in self.agencies:
            if unknown := sorted(set(agency.spoken) - set(offered[1:])):
                raise ValueError(f"agency {agency.id} has spoken names in {', '.join(unknown)}, which is not "
                                 "another language prompts offer")
        if self.sip.outbound_trunk is None and self.queue.callback.enabled:
            raise ValueError("queue.callback.enabled needs sip.outbound_trunk (host:port of the outbound trunk)")
        if self.sip.outbound_trunk is None and (phoned := [a.id for a in self.agencies if a.phone]):
            raise ValueError(f"agencies {', '.join(phoned)} have a phone, which needs sip.outbound_trunk")
        accounts = {a.id for a in self.agents.accounts}
        if clash := [a.id for a in self.agencies if a.phone in accounts]:
            # The front rings an agent's phones for a number that is an agent's id.
            raise ValueError(f"the phone of agencies {', '.join(clash)} is an agent's id")
        for account in self.agents.accounts:
            if unknown := [code for code in account.languages if code not in offered]:
                raise ValueError(f"agent {account.id} speaks {', '.join(unknown)}, which prompts do not offer "
                                 f"(offered: {', '.join(offered)})")
            if unknown := [agency for agency in account.agencies if agency not in agencies]:
                raise ValueError(f"agent {account.id} handles agencies that are not configured: {', '.join(unknown)}")
        if self.database_url is not None and not re.fullmatch(HOST_NAME_PATTERN, self.cluster.host_name):
            raise ValueError(f"the machine's host name {self.cluster.host_name!r} cannot name a host in the "
                             "shared store: set cluster.name")
        shared = self.recordings_store.shared_dir
        if shared is not None:
            # data_dir is resolved from the working directory after validation (load_config): the same here.
            local, shared = self.recordings_path.resolve(), shared.resolve()
            if shared == local or local in shared.parents or shared in local.parents:
                raise ValueError(f"recordings_store.shared_dir {shared} and the recordings directory {local} "
                                 "must not contain each other")
        return self

    def under_data(self, path: Path) -> Path:
        """Relative paths in the config live under data_dir."""
        return path if path.is_absolute() else self.data_dir / path

    @property
    def database_path(self) -> Path:
        return self.under_data(self.database)

    @property
    def store_target(self) -> Path | str:
        """What open_store takes: the PostgreSQL URL when set, else the SQLite file's path."""
        return self.database_url.get_secret_value() if self.database_url is not None else self.database_path

    @property
    def recordings_path(self) -> Path:
        return self.under_data(self.recordings_dir)

    @property
    def console_url(self) -> str:
        """The base URL the other hosts reach this host's web server at (``cluster.console_url``)."""
        if self.cluster.console_url is not None:
            return self.cluster.console_url.rstrip("/")
        host = self.http.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.getfqdn()
        elif ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.http.tls_cert_file is not None else 'http'}://{host}:{self.http.port}"

    @property
    def control_socket(self) -> Path:
        return self.under_data(Path("control.sock"))

    @property
    def run_dir(self) -> Path:
        """Pid files, the front's runtime files and the admin socket."""
        return self.under_data(Path("run"))

    @property
    def admin_socket(self) -> Path:
        """Where `softswitch status`, `calls` and `hangup` reach the running control process."""
        return self.run_dir / "admin.sock"

    @property
    def agent_skills(self) -> dict[str, frozenset[str]]:
        """What each agent can take beyond a plain call: ``lang:<code>`` for each language it speaks, when
        callers choose among several languages, and ``agency:<id>`` for each agency it handles, when
        callers choose a topic (``queue.topics``). Nothing to choose by: no skills."""
        skills: dict[str, frozenset[str]] = {}
        for a in self.agents.accounts:
            languages = (a.languages or (self.prompts.language,)) if self.prompts.other_languages else ()
            agencies = (a.agencies or self.queue.topics) if self.queue.topics else ()
            skills[a.id] = frozenset([*map(language_skill, languages), *map(agency_skill, agencies)])
        return skills if any(skills.values()) else {}

    @property
    def prompt_cache(self) -> Path:
        return self.under_data(self.prompts.cache_dir)


def language_skill(code: str) -> str:
    """The ACD skill a caller who chose this language needs."""
    return f"lang:{code}"


def agency_skill(agency_id: str) -> str:
    """The ACD skill a caller who chose this agency's topic needs."""
    return f"agency:{agency_id}"


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Embedded defaults, then the YAML file (if any), then overrides; a relative data_dir is taken from the cwd."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(where + "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())) from None
    if not config.data_dir.is_absolute():
        config = config.model_copy(update={"data_dir": config.data_dir.resolve()})
    return config


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def load_prompt_texts(path: Path) -> dict[str, str]:
    try:
        texts = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(texts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in texts.items()):
        raise ConfigError(f"{path}: must map prompt names to texts")
    return texts
