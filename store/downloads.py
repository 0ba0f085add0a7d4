"""Who downloaded which export: a curator's download is recorded like any other access to
the validated dataset."""

from __future__ import annotations

from store import audit
from store.auth import require
from store.db import Store
from store.models import Role


def record_export_download(store: Store, user_id: int, project_id: int, file_name: str,
                           size_bytes: int) -> None:
    with store.session(immediate=True) as s:
        user = require(s, user_id, Role.curator)
        audit.record(s, user.name, "export.download", "project", project_id, file=file_name,
                     bytes=size_bytes)
