-- Users of record. Ids are UUIDv7 text (sortable by creation), timestamps
-- are epoch microseconds, `version` increments on every write so caches can
-- refuse to overwrite a newer copy with an older one.
CREATE TABLE users (
    user_id                  TEXT PRIMARY KEY,
    email                    TEXT NOT NULL UNIQUE,
    full_name                TEXT NOT NULL,
    status                   TEXT NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'SUSPENDED')),
    pref_language            TEXT NOT NULL DEFAULT '',
    pref_timezone            TEXT NOT NULL DEFAULT '',
    pref_email_notifications BIGINT NOT NULL DEFAULT 0,
    version                  BIGINT NOT NULL,
    created_at_us            BIGINT NOT NULL,
    updated_at_us            BIGINT NOT NULL
);
