"""The service's state: API keys, sessions, files, jobs, events and checkpoints (SQLAlchemy 2).

SQLite under the home by default (WAL, so the API and the workers read while a job writes), PostgreSQL with
``--database postgresql://...``. The schema is created and upgraded by the Alembic migrations in
``serve/migrations`` when a ``Store`` opens, on either database. Every state change of a job is one
transaction; a worker claims a job with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL and an atomic
``UPDATE ... WHERE status='queued'`` on SQLite, so two workers never run the same job.

Store methods take and return plain dicts (no ORM objects leak into the API or the worker threads).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

ACTIVE = ("validating_files", "queued", "running", "paused")
FINAL = ("succeeded", "failed", "cancelled")


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class SessionRow(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40))
    project: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class FileRow(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # uploaded | processed | error
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the home (workers may mount it elsewhere)
    train_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # a converted copy to train on
    format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    examples: Mapped[int] = mapped_column(Integer, default=0)
    max_chars: Mapped[int] = mapped_column(Integer, default=0)
    audit: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(Text)
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    method: Mapped[dict] = mapped_column(JSON)  # OpenAI's method object, "auto" values resolved
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    options: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # extra_body["tuneforge"] as given
    config: Mapped[dict] = mapped_column(JSON)  # the tuneforge run config the worker trains
    status: Mapped[str] = mapped_column(String(24), index=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_finish: Mapped[float | None] = mapped_column(Float, nullable=True)
    result_files: Mapped[list | None] = mapped_column(JSON, nullable=True)
    run_dir: Mapped[str] = mapped_column(Text)  # relative to the home
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_step: Mapped[int] = mapped_column(Integer, default=0)  # the last step with a metrics event
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class EventRow(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def row_dict(row) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


def database_url(database: str | None, home: Path) -> str:
    """``None`` -> SQLite under the home; ``postgresql://`` is given the psycopg 3 driver."""
    if not database:
        return f"sqlite:///{Path(home) / 'tuneforge.db'}"
    if database.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            from tuneforge.errors import TuneforgeError

            raise TuneforgeError(
                "a PostgreSQL database needs the postgres extra: pip install 'tuneforge[postgres]'"
            )
        return "postgresql+psycopg://" + database.split("://", 1)[1]
    return database


def migrate(engine) -> None:
    """Create or upgrade the schema to the newest migration (Alembic, programmatically), in one transaction
    that holds a lock, so processes starting together (a server and its workers) migrate once."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7146)"))  # released at commit
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the database's write lock, until commit
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """The database: open (and migrate) it once per process; thread-safe."""

    def __init__(self, url: str):
        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

            @event.listens_for(self.engine, "connect")
            def _pragmas(conn, _):
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        try:
            migrate(self.engine)
        except Exception as e:  # e.g. PostgreSQL not reachable: say so in one line
            from tuneforge.errors import TuneforgeError

            raise TuneforgeError(f"cannot open the database {safe_url(url)}: {e}") from None
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # ---- keys and sessions
    def add_key(self, project: str, key_hash: str, prefix: str) -> dict:
        with self.Session.begin() as s:
            row = ApiKey(
                id=new_id("key"), project=project, key_hash=key_hash, prefix=prefix, created_at=time.time()
            )
            s.add(row)
            return row_dict(row)

    def keys(self) -> list[dict]:
        with self.Session() as s:
            return [row_dict(r) for r in s.scalars(select(ApiKey).order_by(ApiKey.created_at))]

    def has_keys(self) -> bool:
        with self.Session() as s:
            return s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) > 0

    def key_by_hash(self, key_hash: str) -> dict | None:
        with self.Session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))
            return row_dict(row) if row else None

    def revoke_key(self, ident: str) -> dict | None:
        """Revoke by id or by the printed prefix; its sessions end with it."""
        with self.Session.begin() as s:
            row = s.scalar(select(ApiKey).where(or_(ApiKey.id == ident, ApiKey.prefix == ident)))
            if row is None:
                return None
            row.revoked_at = row.revoked_at or time.time()
            s.query(SessionRow).filter(SessionRow.key_id == row.id).delete()
            return row_dict(row)

    def add_session(self, token_hash: str, key_id: str, project: str, ttl: float) -> None:
        with self.Session.begin() as s:
            now = time.time()
            s.add(
                SessionRow(
                    token_hash=token_hash,
                    key_id=key_id,
                    project=project,
                    created_at=now,
                    expires_at=now + ttl,
                )
            )

    def session_project(self, token_hash: str) -> str | None:
        with self.Session() as s:
            row = s.get(SessionRow, token_hash)
            if row is None or row.expires_at < time.time():
                return None
            key = s.get(ApiKey, row.key_id)
            return row.project if key is not None and key.revoked_at is None else None

    def end_session(self, token_hash: str) -> None:
        with self.Session.begin() as s:
            s.query(SessionRow).filter(SessionRow.token_hash == token_hash).delete()

    # ---- files
    def add_file(self, **fields) -> dict:
        with self.Session.begin() as s:
            row = FileRow(created_at=time.time(), **fields)
            s.add(row)
            return row_dict(row)

    def file(self, project: str | None, file_id: str) -> dict | None:
        with self.Session() as s:
            row = s.get(FileRow, file_id)
            if row is None or row.deleted or (project is not None and row.project != project):
                return None
            return row_dict(row)

    def files(self, project: str, purpose: str | None = None) -> list[dict]:
        """Newest first."""
        with self.Session() as s:
            q = select(FileRow).where(FileRow.project == project, FileRow.deleted.is_(False))
            if purpose:
                q = q.where(FileRow.purpose == purpose)
            return [row_dict(r) for r in s.scalars(q.order_by(FileRow.created_at.desc(), FileRow.id.desc()))]

    def delete_file(self, project: str, file_id: str) -> bool:
        with self.Session.begin() as s:
            row = s.get(FileRow, file_id)
            if row is None or row.deleted or row.project != project:
                return False
            row.deleted = True
            return True

    def jobs_using_file(self, file_id: str) -> list[str]:
        with self.Session() as s:
            q = select(JobRow.id).where(
                or_(JobRow.training_file == file_id, JobRow.validation_file == file_id),
                JobRow.status.in_(ACTIVE),
            )
            return list(s.scalars(q))

    # ---- jobs
    def add_job(self, **fields) -> dict:
        with self.Session.begin() as s:
            row = JobRow(created_at=time.time(), **fields)
            s.add(row)
            return row_dict(row)

    def job(self, project: str | None, job_id: str) -> dict | None:
        with self.Session() as s:
            row = s.get(JobRow, job_id)
            if row is None or (project is not None and row.project != project):
                return None
            return row_dict(row)

    def jobs(self, project: str | None = None) -> list[dict]:
        """Newest first."""
        with self.Session() as s:
            q = select(JobRow)
            if project is not None:
                q = q.where(JobRow.project == project)
            return [row_dict(r) for r in s.scalars(q.order_by(JobRow.created_at.desc(), JobRow.id.desc()))]

    def job_by_model(self, project: str, model: str) -> dict | None:
        with self.Session() as s:
            row = s.scalar(
                select(JobRow).where(
                    JobRow.project == project,
                    JobRow.fine_tuned_model == model,
                    JobRow.model_deleted.is_(False),
                )
            )
            return row_dict(row) if row else None

    def update_job(self, job_id: str, *, when: dict | None = None, **fields) -> bool:
        """Set ``fields`` on the job in one transaction, only if its columns equal ``when`` (e.g. the status it
        must still have, the worker that must still hold it). True when the row changed."""
        with self.Session.begin() as s:
            q = update(JobRow).where(JobRow.id == job_id)
            for k, v in (when or {}).items():
                col = getattr(JobRow, k)
                q = q.where(
                    col.in_(v) if isinstance(v, (tuple, list)) else (col.is_(None) if v is None else col == v)
                )
            return s.execute(q.values(**fields)).rowcount == 1

    def claim_job(self, worker_id: str, lease: float) -> dict | None:
        """Take the oldest runnable job for ``worker_id``: a queued one no worker still holds, or a running one
        whose worker's lease ran out (it died: the job resumes from its checkpoint). Atomic on both databases."""
        now = time.time()
        runnable = or_(
            (JobRow.status == "queued") & (JobRow.worker_id.is_(None) | (JobRow.lease_until < now)),
            (JobRow.status == "running") & (JobRow.lease_until < now),
        )
        values = dict(
            worker_id=worker_id, lease_until=now + lease, status="running", attempts=JobRow.attempts + 1
        )
        with self.Session.begin() as s:
            if self.sqlite:
                oldest = (
                    select(JobRow.id).where(runnable).order_by(JobRow.created_at).limit(1).scalar_subquery()
                )
                q = update(JobRow).where(JobRow.id == oldest, runnable).values(**values).returning(JobRow.id)
                job_id = s.execute(q).scalar()
            else:
                q = select(JobRow.id).where(runnable).order_by(JobRow.created_at).limit(1)
                job_id = s.execute(q.with_for_update(skip_locked=True)).scalar()
                if job_id is not None:
                    s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))
            if job_id is None:
                return None
            s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.started_at.is_(None)).values(started_at=now)
            )
        return self.job(None, job_id)

    def expire_dead_workers(self) -> int:
        """Running jobs held by a worker process of THIS host that no longer exists (killed with -9): their
        lease ends now, so they are taken up again at once instead of after the lease."""
        host = socket.gethostname()
        n = 0
        with self.Session() as s:
            held = s.execute(select(JobRow.id, JobRow.worker_id).where(JobRow.worker_id.is_not(None))).all()
        for job_id, worker in held:
            w_host, _, rest = worker.partition(":")
            pid = rest.split(":")[0]
            if w_host == host and pid.isdigit() and not _alive(int(pid)):
                n += self.update_job(job_id, when={"worker_id": worker}, lease_until=0.0)
        return n

    # ---- events and checkpoints
    def add_event(
        self, job_id: str, message: str, level: str = "info", type: str = "message", data=None
    ) -> None:
        with self.Session.begin() as s:
            s.add(EventRow(id=new_id("ftevent"), job_id=job_id, created_at=time.time(), level=level,
                           message=message, type=type, data=data))  # fmt: skip

    def events(self, job_id: str) -> list[dict]:
        """Newest first."""
        with self.Session() as s:
            q = select(EventRow).where(EventRow.job_id == job_id).order_by(EventRow.seq.desc())
            return [row_dict(r) for r in s.scalars(q)]

    def add_checkpoint(self, job_id: str, step: int, metrics: dict) -> bool:
        with self.Session.begin() as s:
            exists = s.scalar(
                select(CheckpointRow.id).where(CheckpointRow.job_id == job_id, CheckpointRow.step == step)
            )
            if exists:
                return False
            s.add(
                CheckpointRow(
                    id=new_id("ftckpt"), job_id=job_id, step=step, created_at=time.time(), metrics=metrics
                )
            )
            return True

    def checkpoints(self, job_id: str) -> list[dict]:
        """Newest first."""
        with self.Session() as s:
            q = (
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id)
                .order_by(CheckpointRow.step.desc())
            )
            return [row_dict(r) for r in s.scalars(q)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(database URL)"
