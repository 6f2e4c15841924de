-- API keys managed through the admin RPCs. Only the SHA-256 of each key's
-- secret is stored; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    key_id        TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    owner         TEXT NOT NULL,
    -- Comma-separated role names.
    roles         TEXT NOT NULL,
    rate_per_sec  BIGINT NOT NULL DEFAULT 0,
    -- Epoch seconds; NULL: never.
    expires_at    BIGINT,
    revoked_at    BIGINT,
    created_at    BIGINT NOT NULL
);
