"""Process-wide settings, read from the environment."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from db.bounds import bounded, check_fields

MODELS_IN_DB = ("auto", "on", "off")


@dataclass(frozen=True)
class Settings:
    """Where RM Studio keeps its state.

    Attributes:
        home: ``RMSTUDIO_HOME`` (default ``./rmstudio-data``): the SQLite database, model versions and
            feature caches live below it.
        db_url: ``RMSTUDIO_DB``, a SQLAlchemy URL (default ``sqlite:///<home>/rmstudio.db``). PostgreSQL
            works with ``postgresql+psycopg://user@host:5432/dbname``.
        researcher_token: ``RMSTUDIO_RESEARCHER_TOKEN``; when set, researcher pages and destructive actions
            in the app ask for it. Unset means the app runs open (single-user laptop mode).
        model_dirs: extra directories (``RMSTUDIO_MODEL_DIRS``, ``os.pathsep``-separated) that backbones
            may be loaded from, besides ``home`` and the bundled MiniLM.
        max_upload_mb: largest file the app accepts for import (``RMSTUDIO_MAX_UPLOAD_MB``, default 200).
        models_in_db: ``RMSTUDIO_MODELS_IN_DB``: ``auto`` (default: on for PostgreSQL, off for SQLite), ``on`` or
            ``off``. On: each new version's files are also stored in the database, so processes on machines that
            share the database but not ``home`` restore them on first use (``rm_engine/versions/model_store.py``).
    """

    home: Path
    db_url: str
    researcher_token: str | None = None
    model_dirs: tuple[Path, ...] = ()
    max_upload_mb: int = field(default=200, metadata=bounded(
        1, 100_000, integer=True, env="RMSTUDIO_MAX_UPLOAD_MB", help="largest file the app accepts for import, in MB"))
    models_in_db: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self, _env_name)
        if self.models_in_db not in MODELS_IN_DB:
            raise ValueError(f"RMSTUDIO_MODELS_IN_DB must be one of {', '.join(MODELS_IN_DB)}, "
                             f"got {self.models_in_db!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("RMSTUDIO_HOME") or "rmstudio-data").expanduser().resolve()
        db_url = env.get("RMSTUDIO_DB") or f"sqlite:///{home / 'rmstudio.db'}"
        dirs = tuple(Path(p).expanduser().resolve() for p in env.get("RMSTUDIO_MODEL_DIRS", "").split(os.pathsep) if p)
        return cls(
            home=home,
            db_url=db_url,
            researcher_token=env.get("RMSTUDIO_RESEARCHER_TOKEN") or None,
            model_dirs=dirs,
            **_numbers_from(env),
            models_in_db=(env.get("RMSTUDIO_MODELS_IN_DB") or "auto").strip().lower(),
        )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def copies_models_to_db(self) -> bool:
        """Whether new versions' files are also stored in the database (see ``models_in_db``)."""
        return self.models_in_db == "on" or (self.models_in_db == "auto" and not self.is_sqlite)


def _env_name(name: str) -> str:
    return next(f.metadata["env"] for f in fields(Settings) if f.name == name)


def _numbers_from(env: Mapping[str, str]) -> dict[str, int | float]:
    """The numeric settings given in ``env``, parsed and checked (a :class:`FieldError` naming the variable)."""
    out: dict[str, int | float] = {}
    for f in fields(Settings):
        raw = env.get(f.metadata.get("env", ""), "").strip() if "bound" in f.metadata else ""
        if raw:
            out[f.name] = f.metadata["bound"].parse(raw, f.metadata["env"], field=f.name)
    return out
