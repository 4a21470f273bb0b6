"""Storage layer: the exceptions the case store raises."""


class StoreError(Exception):
    """Base of every error raised by the storage package."""


class NotFound(StoreError):
    """The requested call, case or recording does not exist."""


class Conflict(StoreError):
    """The write contradicts what is already stored."""


class StorageFull(StoreError):
    """The database or the disk under it is full; the driver's error is chained."""


class StoreDamaged(StoreError):
    """The database file is not a database, or SQLite's integrity check found damage."""


class StoreUnavailable(StoreError):
    """The database server cannot be reached, or dropped the connection; the driver's error is chained."""


class ConstraintViolation(StoreError):
    """A write broke a constraint of the schema (a CHECK, NOT NULL, ...); the driver's error is chained."""


class UniqueViolation(ConstraintViolation, Conflict):
    """A unique constraint refused a write; ``where`` names it as ``table.column``, never the value."""

    def __init__(self, where: str) -> None:
        super().__init__(f"unique constraint failed: {where}")
        self.where = where


class ForeignKeyViolation(ConstraintViolation, NotFound):
    """A write referred to a row that does not exist."""
