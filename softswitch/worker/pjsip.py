"""How an endpoint of ours is set up: the one place that configures PJSUA2 for telephone audio.

The media worker and the tests' softphone (``tests/sip/softphone.py``) both
start their library here, so they speak the same profile: 8 kHz mono, no
sound device, no VAD or echo canceller, one UDP transport on a given address,
G.711 only (A-law first), no ICE or SRTP.
"""

from __future__ import annotations

import pjsua2 as pj

# G.711 only, A-law preferred: what the trunks and the agents' phones speak.
CODEC_PRIORITIES = {"PCMA": 200, "PCMU": 150}


def endpoint_config(user_agent: str, log_level: int, *, msg_logging: bool = False,
                    main_thread_only: bool = False, max_calls: int | None = None,
                    max_media_ports: int | None = None) -> pj.EpConfig:
    """Polled on the caller's thread (``threadCnt`` 0): SIP callbacks run in its ``libHandleEvents``."""
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = main_thread_only
    cfg.uaConfig.userAgent = user_agent
    if max_calls is not None:
        cfg.uaConfig.maxCalls = max_calls
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    cfg.medConfig.channelCount = 1
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0  # no sound device, so nothing to cancel echo of
    if max_media_ports is not None:
        cfg.medConfig.maxMediaPorts = max_media_ports
    cfg.logConfig.level = log_level
    cfg.logConfig.consoleLevel = log_level
    cfg.logConfig.msgLogging = 1 if msg_logging else 0
    return cfg


def start(ep: pj.Endpoint, cfg: pj.EpConfig, host: str, sip_port: int) -> None:
    """``libInit`` with ``cfg``, a null sound device, a UDP transport on host:port, started, G.711 only."""
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tcfg = pj.TransportConfig()
    tcfg.port = sip_port
    tcfg.boundAddress = host
    tcfg.publicAddress = host
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, CODEC_PRIORITIES.get(codec.codecId.split("/")[0], 0))


def account_config(id_uri: str, host: str, rtp_port: int, rtp_port_range: int,
                   public_host: str | None = None) -> pj.AccountConfig:
    """An account whose RTP is bound to ``host`` from ``rtp_port``; its SDP names ``public_host`` (or host)."""
    acfg = pj.AccountConfig()
    acfg.idUri = id_uri
    media = acfg.mediaConfig.transportConfig
    media.port = rtp_port
    media.portRange = rtp_port_range
    media.boundAddress = host
    media.publicAddress = public_host or host
    acfg.natConfig.iceEnabled = False
    acfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_DISABLED
    return acfg
