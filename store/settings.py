"""One settings object, read from MEDLOOP_* environment variables with local defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    max_file_mb: float = 2048.0
    holdout_fraction: float = 0.2
    test_fraction: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def secret_file(self) -> Path:
        # Keys the pseudonyms and UID remapping of de-identification; never leaves the data dir.
        return self.data_dir / "deid.secret"


def load_settings() -> Settings:
    """Read the environment now (tests change it between cases)."""
    data_dir = Path(os.environ.get("MEDLOOP_DATA_DIR") or Path.cwd() / ".medloop").resolve()
    url = os.environ.get("MEDLOOP_DATABASE_URL") or f"sqlite:///{data_dir / 'medloop.db'}"
    return Settings(
        data_dir=data_dir,
        database_url=url,
        max_file_mb=_env_float("MEDLOOP_MAX_FILE_MB", 2048.0),
        holdout_fraction=_env_float("MEDLOOP_HOLDOUT_FRACTION", 0.2),
        test_fraction=_env_float("MEDLOOP_TEST_FRACTION", 0.0),
    )
