"""The tracker's schema, in one text for SQLite and PostgreSQL, and its versioned migrations.

* ``BASE_SCHEMA`` + ``BASE_INDEXES`` create schema v3, the first version both
  backends share. SQLite files older than v3 are brought up to it by
  ``SqliteTrackerStore`` (columns added, cohorts assigned); PostgreSQL starts
  at v3.
* ``MIGRATIONS[n]`` takes a database from v(n-1) to vn, on both backends; a
  new schema change is a new entry here, never an edit of an old one.
* The text is SQLite's; ``postgres_ddl`` maps its types (64-bit integers,
  identity keys, byte-order text so times and ids sort the same on both).
* Times are RFC 3339 UTC text with whole seconds, so they compare as text on
  both backends.
"""

from __future__ import annotations

import re

BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    hardware_id TEXT NOT NULL,
    tags TEXT NOT NULL,                 -- JSON list of tags
    public_key TEXT NOT NULL,           -- JSON object, opaque to staging
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'revoked')),
    registered_at TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    installed_version TEXT,
    target_version TEXT,
    rollout_id TEXT,                    -- as last reported; not a foreign key
    state TEXT,                         -- NULL until the first report
    last_seen TEXT,
    error_code TEXT,
    error_message TEXT NOT NULL DEFAULT '',
    failed_state TEXT,                  -- last failed/rolled_back report, kept
    failed_version TEXT,                --   across later heartbeats so gates
    failed_rollout_id TEXT,             --   still see it
    failed_at TEXT,
    state_since TEXT,                   -- when state last changed
    progress_at TEXT,                   -- when state or bytes_done last changed
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    cohort_rollout TEXT,                -- newest rollout of the hardware id, and
    cohort_wave INTEGER,                --   the device's wave in it (-1: none)
    clock_skew INTEGER,                 -- v3: report time minus server time, seconds
    failed_code TEXT,                   -- v3: error code and message of the kept
    failed_message TEXT NOT NULL DEFAULT '' --   failure (later heartbeats keep them)
);
CREATE INDEX IF NOT EXISTS devices_by_hardware ON devices (hardware_id, device_id);
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY,
    hardware_id TEXT NOT NULL,
    version TEXT NOT NULL,
    target_path TEXT NOT NULL,
    waves TEXT NOT NULL,                -- JSON list of tufota_core.Wave
    options TEXT NOT NULL,              -- JSON of RolloutOptions
    state TEXT NOT NULL CHECK (state IN ('active', 'paused', 'aborted', 'completed')),
    current_wave INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    wave_started_at TEXT NOT NULL,
    failures_since TEXT NOT NULL,
    revision INTEGER NOT NULL,
    published_revision INTEGER NOT NULL DEFAULT 0,
    wave_times TEXT NOT NULL DEFAULT '[]', -- JSON list: when each wave opened
    retry_generation INTEGER NOT NULL DEFAULT 0, -- v3: re-offers to failed devices so far
    retried_at TEXT                     -- v3: when the latest re-offer was made
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_live_per_hardware
    ON rollouts (hardware_id) WHERE state IN ('active', 'paused');
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_id TEXT REFERENCES devices (device_id),
    rollout_id TEXT,                    -- device reports may name any rollout
    state TEXT,
    version TEXT,
    wave INTEGER,
    seq INTEGER,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device_id, event_id);
CREATE INDEX IF NOT EXISTS events_by_rollout ON events (rollout_id, event_id);
"""

# Objects of the base schema that need v2/v3 columns (created after an old SQLite file is
# brought up to v3).
BASE_INDEXES = """
DROP INDEX IF EXISTS devices_by_cohort;
DROP INDEX IF EXISTS devices_by_cohort_cover;
-- Covers every column the gate's aggregation reads, so counting a rollout's
-- devices is one index-only range scan (no table lookups): ~0.7 s at 1M devices.
-- (v3 adds clock_skew, which the gate counts too.)
CREATE INDEX IF NOT EXISTS devices_by_cohort_cover3 ON devices (
    cohort_rollout, cohort_wave, status, installed_version, state, target_version, rollout_id,
    failed_state, failed_version, failed_rollout_id, failed_at, last_seen, clock_skew
);
CREATE INDEX IF NOT EXISTS devices_by_version ON devices (hardware_id, installed_version);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    hardware_id TEXT,
    rollout_id TEXT,
    device_id TEXT,
    details TEXT NOT NULL,              -- JSON object
    opened_at TEXT NOT NULL,
    resolved_at TEXT,
    resolution TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open_per_key ON alerts (key)
    WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_by_rollout ON alerts (rollout_id, alert_id);
CREATE TABLE IF NOT EXISTS notifications (
    notification_id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id INTEGER NOT NULL REFERENCES alerts (alert_id),
    phase TEXT NOT NULL CHECK (phase IN ('opened', 'resolved')),
    sink TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at TEXT NOT NULL,
    done_at TEXT,                       -- delivered, or given up (see last_error)
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_at)
    WHERE done_at IS NULL;
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL                 -- JSON
);
CREATE TABLE IF NOT EXISTS security_events (  -- v3: verification failures devices reported
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    device_id TEXT NOT NULL,
    hardware_id TEXT NOT NULL,
    rollout_id TEXT,
    version TEXT,
    code TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS security_events_by_rollout ON security_events (rollout_id, event_id);
CREATE INDEX IF NOT EXISTS security_events_by_hardware ON security_events (hardware_id, event_id);
CREATE TABLE IF NOT EXISTS transfers (  -- image downloads devices reported, by delta or in full
    transfer_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    device_id TEXT NOT NULL,
    rollout_id TEXT,
    version TEXT,
    image_bytes INTEGER NOT NULL,       -- size of the signed image
    fetched_bytes INTEGER NOT NULL,     -- bytes the device received for it
    delta_from TEXT                     -- installed version a delta started from; NULL: full
);
CREATE INDEX IF NOT EXISTS transfers_by_rollout ON transfers (rollout_id);
CREATE INDEX IF NOT EXISTS transfers_by_device ON transfers (device_id, transfer_id);
"""

# Columns added by schema v2 to a v1 file (ALTER TABLE runs before the v2 indexes).
V2_COLUMNS = (
    ("devices", "state_since TEXT"),
    ("devices", "progress_at TEXT"),
    ("devices", "bytes_done INTEGER NOT NULL DEFAULT 0"),
    ("devices", "bytes_total INTEGER NOT NULL DEFAULT 0"),
    ("devices", "cohort_rollout TEXT"),
    ("devices", "cohort_wave INTEGER"),
    ("rollouts", "wave_times TEXT NOT NULL DEFAULT '[]'"),
)
# Columns added by schema v3 to a v1 or v2 file.
V3_COLUMNS = (
    ("devices", "clock_skew INTEGER"),
    ("devices", "failed_code TEXT"),
    ("devices", "failed_message TEXT NOT NULL DEFAULT ''"),
    ("rollouts", "retry_generation INTEGER NOT NULL DEFAULT 0"),
    ("rollouts", "retried_at TEXT"),
)

# v4: API tokens move from REPO/tokens.json into the database, so every replica sees the same.
MIGRATIONS: dict[int, str] = {
    4: """
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    sha256 TEXT NOT NULL,               -- of the whole token; the token itself is never stored
    created TEXT NOT NULL,
    expires TEXT                        -- NULL: until revoked
);
""",
}
BASE_VERSION = 3
SCHEMA_VERSION = max(MIGRATIONS)

# PostgreSQL only: insertion order of rollouts (SQLite has its rowid).
POSTGRES_EXTRA = """
ALTER TABLE rollouts ADD COLUMN IF NOT EXISTS ord BIGINT GENERATED BY DEFAULT AS IDENTITY;
"""

_COMMENT = re.compile(r"--[^\n]*")


def statements(script: str) -> list[str]:
    """The statements of a script (``;`` at the end of a line ends one)."""
    return [s.strip() for s in script.split(";\n") if s.strip()]


def postgres_ddl(script: str) -> str:
    """SQLite DDL as PostgreSQL DDL: BIGINT integers, identity keys, ``COLLATE "C"`` text."""
    text = _COMMENT.sub("", script)
    text = text.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', text)
