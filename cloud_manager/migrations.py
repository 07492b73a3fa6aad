"""The store's schema, as the ordered list of versions that built it, applied at start.

Each :class:`Migration` takes the schema from the version before it to its own; ``meta``'s
``schema`` row holds the version a store is at (the first release wrote ``1`` there already, so
its files need no guess). Opening a store applies the missing versions in one transaction with
the version row, so a crash leaves it at the old version or the new one, never between; a store
at a version newer than this build's is refused rather than misread. Several managers starting
on one PostgreSQL take an advisory lock first, so the migration runs once.

The DDL is shared by both engines; ``{real}`` is the dialect's float type, ``{serial}`` its
auto-numbered key.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_manager.database import Connection, Dialect

#: any constant: the advisory lock that serialises migrations of one PostgreSQL database
_MIGRATION_LOCK = 0x6564_6765


@dataclass(frozen=True)
class Migration:
    version: int
    #: why the version exists, for a reader of the schema's history
    purpose: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the first release's tables", (
        "CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY, created {real} NOT NULL)",
        """CREATE TABLE IF NOT EXISTS resources (
            kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
            manifest TEXT NOT NULL, generation INTEGER NOT NULL, created {real} NOT NULL,
            updated {real} NOT NULL, PRIMARY KEY (kind, namespace, name))""",
        """CREATE TABLE IF NOT EXISTS jobs (
            namespace TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
            updated {real} NOT NULL, PRIMARY KEY (namespace, name))""",
        """CREATE TABLE IF NOT EXISTS tasks (
            task_id TEXT NOT NULL, attempt INTEGER NOT NULL, job TEXT NOT NULL, role TEXT NOT NULL,
            round INTEGER NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL, message TEXT NOT NULL,
            updated {real} NOT NULL, PRIMARY KEY (task_id, attempt))""",
        "CREATE TABLE IF NOT EXISTS processed (key TEXT PRIMARY KEY, time {real} NOT NULL)",
        """CREATE TABLE IF NOT EXISTS model_versions (
            job TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL, time {real} NOT NULL,
            PRIMARY KEY (job, version))""",
        """CREATE TABLE IF NOT EXISTS nodes (
            name TEXT PRIMARY KEY, state TEXT NOT NULL, boot_id TEXT NOT NULL, status TEXT NOT NULL,
            updated {real} NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS dataset_samples (
            namespace TEXT NOT NULL, name TEXT NOT NULL, samples BIGINT NOT NULL, error TEXT,
            node TEXT NOT NULL, updated {real} NOT NULL, PRIMARY KEY (namespace, name))""",
        """CREATE TABLE IF NOT EXISTS desired (
            node TEXT PRIMARY KEY, generation INTEGER NOT NULL, content TEXT NOT NULL)""",
    )),
    Migration(2, "the sweep of old message keys and a job's task list read an index, not the "
                 "table; the lease that names the one manager taking decisions", (
        "CREATE INDEX IF NOT EXISTS processed_by_time ON processed (time)",
        "CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks (job, updated)",
        """CREATE TABLE IF NOT EXISTS leader_lease (
            name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL,
            expires {real} NOT NULL)""",
    )),
    Migration(3, "several managers split the ingest: what a manager that does not decide "
                 "ingested, for the leader to decide on (in order); the MQTT sessions of the "
                 "managers' ingest connections and who holds each", (
        """CREATE TABLE IF NOT EXISTS ingest_journal (
            seq {serial} PRIMARY KEY, namespace TEXT NOT NULL, job TEXT NOT NULL,
            event TEXT NOT NULL, time {real} NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS ingest_members (
            client_id TEXT PRIMARY KEY, holder TEXT NOT NULL, adopted INTEGER NOT NULL,
            expires {real} NOT NULL)""",
    )),
)

#: the version this build writes
SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The store was written by a newer build."""


def schema_version(db: Connection) -> int:
    """The version a store is at; 0 for an empty one."""
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    return int(row["value"]) if row else 0


def migrate(db: Connection, dialect: Dialect) -> tuple[int, int]:
    """Bring the store to :data:`SCHEMA_VERSION`; returns (version found, version now)."""
    db.execute(dialect.begin)
    try:
        if dialect.name == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        found = schema_version(db)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(f"schema {found}, newer than this build's {SCHEMA_VERSION}")
        for migration in (m for m in MIGRATIONS if m.version > found):
            for statement in migration.statements:
                db.execute(statement.format(real=dialect.real, serial=dialect.serial))
        if found < SCHEMA_VERSION:
            db.execute("INSERT INTO meta VALUES ('schema', ?) ON CONFLICT (key) DO UPDATE "
                       "SET value=excluded.value", (str(SCHEMA_VERSION),))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found, SCHEMA_VERSION
