-- Keys can be voided (closed for good, no charge ever made with them),
-- remember the request they guard (to record a charge found by
-- reconciliation), and are found quickly once abandoned. SQLite cannot
-- alter a CHECK constraint, so the table is rebuilt.
CREATE TABLE idempotency_keys_v2 (
    operation       TEXT NOT NULL CHECK (operation IN ('charge', 'refund')),
    idempotency_key TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    payment_id      TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL,
    recovery_point  TEXT NOT NULL CHECK (recovery_point IN ('started', 'finished', 'voided')),
    lock_token      TEXT NOT NULL,
    locked_until_us BIGINT NOT NULL,
    created_at_us   BIGINT NOT NULL,
    request         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (operation, idempotency_key)
);
INSERT INTO idempotency_keys_v2 (operation, idempotency_key, fingerprint, payment_id, amount_minor,
    recovery_point, lock_token, locked_until_us, created_at_us)
SELECT operation, idempotency_key, fingerprint, payment_id, amount_minor,
    recovery_point, lock_token, locked_until_us, created_at_us
FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_v2 RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_abandoned ON idempotency_keys (recovery_point, locked_until_us);

-- The built-in simulated provider's own records: what a real provider keeps
-- on its side (and survives our crashes), read back when reconciling.
CREATE TABLE simulated_provider_operations (
    operation       TEXT NOT NULL CHECK (operation IN ('charge', 'refund')),
    idempotency_key TEXT NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('approved', 'declined', 'refunded')),
    detail          TEXT NOT NULL,
    PRIMARY KEY (operation, idempotency_key)
);
