"""Model-version rows and cached response scores (no torch: the files are the engine's registry's business).

A ``model_versions`` row is inserted only after its files are in place (see ``rm_engine/versions/registry.py``); deleting
a row here leaves the files to the caller, who removes them after the transaction commits.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import ModelVersion, ModelVersionArchive, Prompt, Response, ResponseScore
from db.session import dialect_insert

SCORE_CHUNK = 5000  # rows per executemany of cached scores


class VersionNotFound(LookupError):
    """No model version matches the reference (an id that does not exist, or ``latest`` with no versions)."""


def insert_version(
    session: Session,
    *,
    mode: str,
    backbone: str,
    path: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    norm_stats: Mapping[str, Any] | None = None,
    data_snapshot: Mapping[str, Any] | None = None,
    n_pairs: int = 0,
    n_labels: int = 0,
    ensemble_size: int = 1,
    job_id: int | None = None,
    device: str | None = None,
) -> ModelVersion:
    """Insert one version row (the caller's write transaction commits it) and return it with its id."""
    v = ModelVersion(
        mode=mode,
        backbone=backbone,
        path=path,
        config=dict(config),
        metrics=dict(metrics or {}),
        norm_stats=dict(norm_stats or {}),
        data_snapshot=dict(data_snapshot or {}),
        n_pairs=int(n_pairs),
        n_labels=int(n_labels),
        ensemble_size=int(ensemble_size),
        job_id=job_id,
        device=device,
    )
    session.add(v)
    session.flush()
    return v


def list_versions(session: Session, limit: int | None = None) -> list[ModelVersion]:
    """Versions, newest first."""
    q = select(ModelVersion).order_by(ModelVersion.id.desc())
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def parse_version_ref(ref: str | int | None) -> str | int:
    """``"latest"`` (also None / "") or an integer id; anything else raises ``ValueError`` naming it."""
    if ref is None or (isinstance(ref, str) and ref.strip().lower() in ("", "latest")):
        return "latest"
    if isinstance(ref, int):
        return ref
    s = str(ref).strip()
    if s.lower().startswith("v") and s[1:].isdigit():
        s = s[1:]
    if not s.isdigit():
        raise ValueError(f"model version {ref!r}: expected 'latest' or a numeric id")
    return int(s)


def get_version(session: Session, ref: str | int | None = "latest") -> ModelVersion:
    """The version with this id, or the newest for ``"latest"``; raises :class:`VersionNotFound`."""
    key = parse_version_ref(ref)
    if key == "latest":
        v = session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1))
        if v is None:
            raise VersionNotFound("no model version exists yet: train one first (rmstudio train)")
        return v
    v = session.get(ModelVersion, key)
    if v is None:
        raise VersionNotFound(f"model version {key} does not exist")
    return v


def versions_before(session: Session, version_id: int) -> list[ModelVersion]:
    """Older versions than ``version_id``, newest first (fallback candidates)."""
    return list(session.scalars(select(ModelVersion).where(ModelVersion.id < version_id).order_by(ModelVersion.id.desc())))


def delete_version(session: Session, version_id: int) -> ModelVersion:
    """Delete a version row and its cached scores; returns the deleted row (its ``path`` tells which files to
    remove after commit). Raises :class:`VersionNotFound`."""
    v = session.get(ModelVersion, int(version_id))
    if v is None:
        raise VersionNotFound(f"model version {version_id} does not exist")
    session.execute(delete(ResponseScore).where(ResponseScore.model_version_id == v.id))
    session.execute(delete(ModelVersionArchive).where(ModelVersionArchive.version_id == v.id))
    session.delete(v)
    session.flush()
    return v


def put_archive(session: Session, version_id: int, data: bytes, sha256: str) -> None:
    """Store (or replace) the database copy of a version's files: ``data`` is a zip of its folder."""
    row = session.get(ModelVersionArchive, int(version_id))
    if row is None:
        session.add(ModelVersionArchive(version_id=int(version_id), data=data, size=len(data), sha256=sha256))
    else:
        row.data, row.size, row.sha256 = data, len(data), sha256
    session.flush()


def get_archive(session: Session, version_id: int) -> tuple[bytes, str] | None:
    """``(zip bytes, sha256)`` of a version's database copy, or None when it has none."""
    row = session.execute(select(ModelVersionArchive.data, ModelVersionArchive.sha256)
                          .where(ModelVersionArchive.version_id == int(version_id))).first()
    return None if row is None else (bytes(row[0]), str(row[1]))


def archived_versions(session: Session) -> dict[int, int]:
    """``{version id: bytes}`` of the versions that have a database copy of their files."""
    return {int(v): int(n) for v, n in session.execute(select(ModelVersionArchive.version_id,
                                                                ModelVersionArchive.size))}


def version_paths(session: Session) -> set[str]:
    """The ``path`` of every version row (the registry keeps these directories and sweeps the rest)."""
    return set(session.scalars(select(ModelVersion.path)))


def version_of_job(session: Session, job_id: int) -> int | None:
    """The id of the version the train job ``job_id`` published, or None."""
    return session.scalar(select(ModelVersion.id).where(ModelVersion.job_id == job_id).order_by(ModelVersion.id).limit(1))


def store_response_scores(session: Session, version_id: int, scores: Mapping[int, tuple[float, float | None]]) -> int:
    """Insert or update cached scores ``{response_id: (score, std)}`` of one version; returns rows written.

    One compiled ``INSERT ... ON CONFLICT DO UPDATE`` executed with the rows as parameter sets (the driver's
    executemany, batched into multi-row statements by SQLAlchemy where the driver needs it), chunk by chunk:
    about 6x shorter than compiling a ``VALUES`` list per chunk, which matters because publishing a version
    writes its scores inside the publishing write transaction (SQLite's write lock)."""
    if not scores:
        return 0
    vid = int(version_id)
    rows = [
        {"model_version_id": vid, "response_id": int(rid), "score": float(sc), "std": None if sd is None else float(sd)}
        for rid, (sc, sd) in scores.items()
    ]
    stmt = dialect_insert(session)(ResponseScore.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["model_version_id", "response_id"],
        set_={"score": stmt.excluded.score, "std": stmt.excluded.std},
    )
    for i in range(0, len(rows), SCORE_CHUNK):
        session.execute(stmt, rows[i:i + SCORE_CHUNK])
    return len(rows)


def get_scores(session: Session, version_id: int, response_ids: Iterable[int] | None = None) -> dict[int, tuple[float, float | None]]:
    """Cached scores of one version: ``{response_id: (score, std)}`` (all, or only ``response_ids``)."""
    q = select(ResponseScore.response_id, ResponseScore.score, ResponseScore.std).where(ResponseScore.model_version_id == version_id)
    if response_ids is not None:
        ids = [int(r) for r in response_ids]
        if not ids:
            return {}
        q = q.where(ResponseScore.response_id.in_(ids))
    return {int(r): (float(s), None if d is None else float(d)) for r, s, d in session.execute(q)}


def responses_for_scoring(session: Session, after_id: int = 0, limit: int = 2000) -> list[tuple[int, str, Any, str]]:
    """Stored responses with their prompt, ``(response_id, prompt_text, prompt_history, response_text)``, by id,
    ``limit`` at a time after ``after_id`` (for rescoring in chunks)."""

    q = (
        select(Response.id, Prompt.text, Prompt.history, Response.text)
        .join(Prompt, Prompt.id == Response.prompt_id)
        .where(Response.id > after_id)
        .order_by(Response.id)
        .limit(limit)
    )
    return [(int(r), p, h, t) for r, p, h, t in session.execute(q)]


def count_responses(session: Session) -> int:
    """How many responses are stored."""

    return int(session.scalar(select(func.count()).select_from(Response)) or 0)


def count_scores(session: Session, version_id: int) -> int:
    """How many responses have a cached score under this version."""
    return int(session.scalar(select(func.count()).select_from(ResponseScore).where(ResponseScore.model_version_id == version_id)) or 0)


def recipe(mode: str, config: Mapping[str, Any] | None) -> str:
    """How a version was trained, in a few words, from its saved training config: ``"linear head, rich
    features, lr 0.003"``, ``"full fine-tune, lr 2e-05"``, ``"LoRA r16, pooling rich, lr 0.0002"`` (pooling only
    when not ``auto``, packing only when on; an empty config, as in versions from before configs were kept, gives
    ``mode``)."""
    c = config or {}
    if not c:
        return mode
    if mode == "head":
        parts = [f"{c.get('head', 'linear')} head", f"{c.get('features', 'rich')} features"]
    else:
        parts = [f"LoRA r{c.get('lora_r', 16)}" if c.get("lora") else "full fine-tune"]
        if c.get("pooling") not in (None, "auto"):
            parts.append(f"pooling {c['pooling']}")
        if c.get("packing"):
            parts.append("packed")
    if c.get("length_covariate"):
        parts.append("length covariate")
    if c.get("lr") is not None:
        parts.append(f"lr {float(c['lr']):g}")
    return ", ".join(parts)


def version_label(v: ModelVersion) -> str:
    """One line that tells versions apart in a picker: ``"v3 · LoRA r16, lr 0.0002 · val 61.9% · 2026-11-27 10:11"``
    (an ensemble adds its size; a version without validation pairs says so)."""
    s = version_summary(v)
    parts = [f"v{v.id}", s["recipe"]]
    if (v.ensemble_size or 1) > 1:
        parts.append(f"ensemble of {v.ensemble_size}")
    acc = s["metrics"]["val_accuracy"]
    parts.append(f"val {acc:.1%}" if acc is not None else "no validation")
    if v.created_at is not None:
        parts.append(v.created_at.strftime("%Y-%m-%d %H:%M"))
    return " · ".join(parts)


def version_labels(session: Session) -> dict[int, str]:
    """``version_label`` of every version, newest first (the pickers' options and their text)."""
    return {v.id: version_label(v) for v in list_versions(session)}


def version_summary(v: ModelVersion) -> dict[str, Any]:
    """A JSON-safe summary with the headline metrics (for ``rmstudio models --json`` and the app)."""
    m = v.metrics or {}
    val = m.get("val") or {}
    train = m.get("train") or {}
    test = m.get("test") or {}
    return {
        "id": v.id,
        "created_at": v.created_at.isoformat() if v.created_at else None,
        "mode": v.mode,
        "recipe": recipe(v.mode, v.config),
        "backbone": v.backbone,
        "path": v.path,
        "n_pairs": v.n_pairs,
        "n_labels": v.n_labels,
        "ensemble_size": v.ensemble_size,
        "job_id": v.job_id,
        "device": v.device,
        "metrics": {
            "train_accuracy": train.get("accuracy"),
            "val_accuracy": val.get("accuracy"),
            "test_accuracy": test.get("accuracy"),
            "val_tie_rate": val.get("tie_rate"),
            "band": (val.get("band") or train.get("band") or {}).get("band"),
            "overfitting": (m.get("overfitting") or {}).get("overfitting"),
        },
    }
