"""The few named errors a user can cause; each message says what to do next."""


class MedloopError(Exception):
    """Base class: a problem the user can fix. The UI and CLI show the message only."""


class InvalidInput(MedloopError):
    """A file, array or argument that medloop cannot accept as given."""


class NotFound(MedloopError):
    """A row or blob that does not exist."""


class BlobCorrupt(MedloopError):
    """A blob whose bytes no longer match its sha256 name."""


class PermissionDenied(MedloopError):
    """The user's role does not allow this action."""


class StaleEdit(MedloopError):
    """The thing being edited changed since it was opened."""


class Conflict(MedloopError):
    """The action clashes with existing data (a duplicate name, say)."""


class Busy(MedloopError):
    """The database stayed locked by other work for longer than we wait: nothing was saved,
    and the same action can simply be tried again."""


class WriteNeedsImmediate(Exception):
    """A programming error: a transaction wrote without taking the write lock up front.

    On SQLite a read-then-write transaction that started as a reader fails at once with
    "database is locked" when another connection commits in between, whatever the busy
    timeout; `Store.session(immediate=True)` takes the lock at BEGIN instead.
    """
