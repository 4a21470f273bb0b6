"""Storage layer: the exceptions the case store raises."""


class StoreError(Exception):
    """Base of every error raised by the storage package."""


class NotFound(StoreError):
    """The requested call, case or recording does not exist."""


class Conflict(StoreError):
    """The write contradicts what is already stored."""


class StorageFull(StoreError):
    """SQLite reported that the database or the disk is full; the cause is chained."""


class StoreDamaged(StoreError):
    """The database file is not a database, or SQLite's integrity check found damage."""
