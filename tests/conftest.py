"""Shared fixtures: a fresh store on SQLite and on PostgreSQL, paths to the shared data."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from store.db import Store
from store.projects import create_project
from store.scratch import scratch_postgres
from store.settings import load_settings

# On a busy 2-core machine torch with 2 threads ran small ops 10-60x slower than with 1.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RADIOMICS = SHARED_DATA / "radiomics"
PG_URL = os.environ.get("MEDLOOP_TEST_PG_URL")


def _pg_database():
    """A new empty PostgreSQL database for one test; dropped afterwards."""
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("MEDLOOP_TEST_PG_URL is not set: run the tests with "
                        "`bash scripts/bootstrap.sh test`, which starts PostgreSQL")
        pytest.skip("PostgreSQL not started (run through scripts/bootstrap.sh test)")
    with scratch_postgres(PG_URL, "medloop_test") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'medloop.db'}"
    else:
        yield from _pg_database()


@pytest.fixture
def store(db_url, tmp_path, monkeypatch) -> Store:
    """A migrated store (both databases) with its data directory in tmp_path."""
    data = tmp_path / "data"
    monkeypatch.setenv("MEDLOOP_DATA_DIR", str(data))
    monkeypatch.setenv("MEDLOOP_DATABASE_URL", db_url)
    s = Store(replace(load_settings(), data_dir=data, database_url=db_url))
    s.upgrade()
    return s


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch) -> Store:
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'medloop.db'}"
    monkeypatch.setenv("MEDLOOP_DATA_DIR", str(data))
    monkeypatch.setenv("MEDLOOP_DATABASE_URL", url)
    s = Store(replace(load_settings(), data_dir=data, database_url=url))
    s.upgrade()
    return s


def make_project(store: Store, name: str = "p", modality: str = "MR",
                 classes: list[dict] | None = None):
    with store.session(immediate=True) as s:
        return create_project(
            s, name, modality, classes or [{"name": "lesion", "value": 1, "color": "#ff0000"}],
            "test")


@pytest.fixture
def project(store):
    return make_project(store)


@pytest.fixture
def radiomics() -> Path:
    if not RADIOMICS.exists():
        pytest.fail(f"shared test data missing at {RADIOMICS}")
    return RADIOMICS
