-- A charge key remembers the payment intent it created at the provider
-- (recorded before the intent is confirmed, so that it can be looked up
-- or cancelled by id whatever became of its owner).
ALTER TABLE idempotency_keys ADD COLUMN intent_id TEXT NOT NULL DEFAULT '';

-- The built-in simulated provider's records, with a provider's life cycle
-- and amounts (replacing simulated_provider_operations, kept unused so
-- that the previous release still runs on this schema).
CREATE TABLE simulated_provider_intents (
    intent_id       TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    currency        TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    payment_method  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('open', 'succeeded', 'declined', 'canceled')),
    decline_reason  TEXT NOT NULL DEFAULT '',
    refunded_minor  BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    created_at_us   BIGINT NOT NULL,
    CHECK (refunded_minor <= amount_minor)
);

CREATE TABLE simulated_provider_refunds (
    refund_id       TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    intent_id       TEXT NOT NULL REFERENCES simulated_provider_intents (intent_id),
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    created_at_us   BIGINT NOT NULL
);
