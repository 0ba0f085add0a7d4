"""Content-addressed blob store: files named by the sha256 of their bytes, verified on read."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from store.errors import BlobCorrupt, NotFound


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store bytes; return (sha256, created) where created is False if it already existed."""
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if dest.exists():
            return sha, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Temp file in the same folder, then an atomic rename: a reader never sees half a blob.
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha, True

    def get_bytes(self, sha: str) -> bytes:
        p = self.path(sha)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise NotFound(
                f"blob {sha[:12]}… is missing from {self.root}: restore the data directory "
                "from a backup or re-import the file"
            ) from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise BlobCorrupt(
                f"blob {p} does not match its sha256 (the file was changed or damaged): "
                "restore it from a backup or re-import the file"
            )
        return data

    def put_array(self, arr: np.ndarray) -> tuple[str, bool]:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return self.put_bytes(buf.getvalue())

    def get_array(self, sha: str) -> np.ndarray:
        return np.load(io.BytesIO(self.get_bytes(sha)), allow_pickle=False)

    def delete(self, sha: str) -> None:
        """Remove a blob (used to undo blobs written by a failed import)."""
        self.path(sha).unlink(missing_ok=True)

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
