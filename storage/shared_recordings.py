"""Storage layer: where a recording's copy lives in the shared directory every host reads.

``<shared_dir>/<host>/<its path under the local recordings directory>``: the
host's name keeps two hosts from ever writing the same path. A row whose path
is under the shared directory has been copied and verified
(``softswitch/control/recording_copy.py``).
"""

from __future__ import annotations

from pathlib import Path


def is_under(path: Path, directory: Path) -> bool:
    """Whether ``path`` lies below ``directory``, compared by name (as rows store them)."""
    return directory in path.parents


def shared_path(local: Path, recordings_dir: Path, shared_dir: Path, host: str) -> Path:
    """Where a local recording's copy goes: ``<shared_dir>/<host>/<its path under recordings_dir>``."""
    return shared_dir / host / local.relative_to(recordings_dir)


def local_path(shared: Path, shared_dir: Path, recordings_dir: Path) -> Path:
    """Where a shared copy's tape lay in a recordings directory: the inverse of :func:`shared_path`."""
    _host, *rest = shared.relative_to(shared_dir).parts
    return recordings_dir.joinpath(*rest)
