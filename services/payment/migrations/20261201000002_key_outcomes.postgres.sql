-- Keys can be voided (closed for good, no charge ever made with them),
-- remember the request they guard (to record a charge found by
-- reconciliation), and are found quickly once abandoned.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_recovery_point_check;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_recovery_point_check
    CHECK (recovery_point IN ('started', 'finished', 'voided'));
ALTER TABLE idempotency_keys ADD COLUMN request TEXT NOT NULL DEFAULT '';
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
