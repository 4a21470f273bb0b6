"""Storage layer: where a recording's copy lives in the shared directory every host reads.

``<shared_dir>/<host>/<its path under the local recordings directory>``: the
host's name keeps two hosts from ever writing the same path. A row whose path
is under the shared directory has been copied and verified
(``softswitch/control/recording_copy.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def is_under(path: Path, directory: Path) -> bool:
    """Whether ``path`` lies below ``directory``, compared by name (as rows store them)."""
    return directory in path.parents


@dataclass(frozen=True)
class SharedLayout:
    shared_dir: Path
    recordings_dir: Path  # this host's local recordings directory
    host: str

    def copy_of(self, local: Path) -> Path:
        """Where a local recording's copy goes."""
        return self.shared_dir / self.host / local.relative_to(self.recordings_dir)

    def local_of(self, shared: Path) -> Path:
        """Where a shared copy's tape lay in the recordings directory (of whichever host made it)."""
        _host, *rest = shared.relative_to(self.shared_dir).parts
        return self.recordings_dir.joinpath(*rest)
