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
