"""IVR layer: office hours of live service (weekly schedule in local time, holidays)."""

from __future__ import annotations

from typing import Any


class OfficeHours:
    @classmethod
    def from_config(cls, cfg: Any) -> OfficeHours:
        return cls()
