"""SIP user agent layer: what the installed PJSUA2 engine holds per process, read from the library itself.

Two engines provide the ``pjsua2`` module: the build of scripts/build-pjsua2.sh
(server profile, 1,000 calls per process) and the PyPI wheel (4 calls). Nothing
here assumes either number: the call cap is what ``pjsua_call_get_max_count``
answers after ``libInit``, which clamps the requested ``maxCalls`` to the
compiled ``PJSUA_MAX_CALLS``. The probe runs in a child process so that the
control process never loads PJSIP.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

# Above any compiled cap: libInit clamps it to PJSUA_MAX_CALLS.
_ASK_FOR_ALL = 1 << 20


@dataclass(frozen=True)
class EngineInfo:
    version: str  # pjproject's, e.g. "2.17"
    max_calls: int  # concurrent calls one process can hold, as compiled


class EngineError(RuntimeError):
    """The pjsua2 module is missing or cannot start; the message says what to run."""


def library_call_cap(pj: Any) -> int | None:
    """The running library's call cap, or None when the module does not export the symbol."""
    try:
        get_max = ctypes.CDLL(pj._pjsua2.__file__).pjsua_call_get_max_count
    except (AttributeError, OSError):
        return None
    get_max.restype = ctypes.c_uint
    return int(get_max())


def _probe_here() -> EngineInfo:
    import pjsua2 as pj

    ep = pj.Endpoint()
    ep.libCreate()
    try:
        cfg = pj.EpConfig()
        cfg.uaConfig.maxCalls = _ASK_FOR_ALL
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.logConfig.level = cfg.logConfig.consoleLevel = 0
        ep.libInit(cfg)
        cap = library_call_cap(pj)
        if cap is None:
            raise EngineError("this pjsua2 module does not say how many calls it holds")
        return EngineInfo(version=ep.libVersion().full, max_calls=cap)
    finally:
        ep.libDestroy()


def probe(timeout_s: float = 30.0) -> EngineInfo:
    """Ask a short-lived child process what the installed engine holds."""
    result = subprocess.run([sys.executable, "-m", "softswitch.worker.engine"], capture_output=True, text=True,
                            timeout=timeout_s, check=False)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"the PJSUA2 engine cannot start ({detail}): run scripts/setup.sh")
    return EngineInfo(**json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    try:
        info = _probe_here()
    except ImportError as exc:
        raise SystemExit(f"no pjsua2 module: {exc}") from None
    print(json.dumps({"version": info.version, "max_calls": info.max_calls}))


if __name__ == "__main__":
    main()
