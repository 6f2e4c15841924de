-- Payments, their ledger and the idempotency keys that guard every
-- money-moving call. Amounts are BIGINT minor units; timestamps epoch µs.
CREATE TABLE payments (
    payment_id           TEXT PRIMARY KEY,
    order_id             TEXT NOT NULL,
    user_id              TEXT NOT NULL,
    currency             TEXT NOT NULL,
    amount_minor         BIGINT NOT NULL CHECK (amount_minor > 0),
    refunded_minor       BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    -- Refunds reserved but not yet confirmed by the provider.
    refund_pending_minor BIGINT NOT NULL DEFAULT 0 CHECK (refund_pending_minor >= 0),
    status               TEXT NOT NULL CHECK (status IN ('CAPTURED', 'DECLINED', 'REFUNDED', 'PARTIALLY_REFUNDED')),
    payment_method       TEXT NOT NULL,
    decline_reason       TEXT NOT NULL DEFAULT '',
    created_at_us        BIGINT NOT NULL,
    updated_at_us        BIGINT NOT NULL,
    -- Refunds can never exceed the capture, whatever the concurrency.
    CHECK (refunded_minor + refund_pending_minor <= amount_minor)
);
CREATE INDEX payments_by_order ON payments (order_id, payment_id);
CREATE INDEX payments_by_user ON payments (user_id, payment_id);

-- Every state change of a payment, append-only.
CREATE TABLE payment_ledger (
    entry_id           TEXT PRIMARY KEY,
    payment_id         TEXT NOT NULL REFERENCES payments (payment_id),
    kind               TEXT NOT NULL CHECK (kind IN ('CAPTURE', 'DECLINE', 'REFUND')),
    amount_minor       BIGINT NOT NULL CHECK (amount_minor >= 0),
    idempotency_key    TEXT NOT NULL,
    provider_reference TEXT NOT NULL DEFAULT '',
    created_at_us      BIGINT NOT NULL
);
CREATE INDEX payment_ledger_by_payment ON payment_ledger (payment_id, created_at_us);

-- One row per (operation, key): the primary key is what makes a key run
-- once. `recovery_point` is 'started' while a request owns it (until
-- `locked_until_us`, fenced by `lock_token`) and 'finished' once its result
-- is stored, after which the result is replayed.
CREATE TABLE idempotency_keys (
    operation       TEXT NOT NULL CHECK (operation IN ('charge', 'refund')),
    idempotency_key TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    payment_id      TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL,
    recovery_point  TEXT NOT NULL CHECK (recovery_point IN ('started', 'finished')),
    lock_token      TEXT NOT NULL,
    locked_until_us BIGINT NOT NULL,
    created_at_us   BIGINT NOT NULL,
    PRIMARY KEY (operation, idempotency_key)
);
