-- Catalog, orders and stock reservations of the order service.
CREATE TABLE products (
    product_id    TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    currency      TEXT NOT NULL,
    price_minor   BIGINT NOT NULL CHECK (price_minor >= 0),
    -- Never negative, whatever the concurrency: every decrement is conditional.
    stock         BIGINT NOT NULL CHECK (stock >= 0),
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);

CREATE TABLE orders (
    order_id       TEXT PRIMARY KEY,
    -- AIP-155: one order per (user, request_id); `fingerprint` tells a
    -- retry from a different request reusing the id.
    request_id     TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    currency       TEXT NOT NULL,
    total_minor    BIGINT NOT NULL CHECK (total_minor >= 0),
    payment_method TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
    failure_reason TEXT NOT NULL DEFAULT '',
    payment_id     TEXT NOT NULL DEFAULT '',
    created_at_us  BIGINT NOT NULL,
    updated_at_us  BIGINT NOT NULL,
    UNIQUE (user_id, request_id)
);
CREATE INDEX orders_by_user ON orders (user_id, order_id);

CREATE TABLE order_items (
    order_id         TEXT NOT NULL REFERENCES orders (order_id),
    product_id       TEXT NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

-- Stock taken for an order, keyed by the order: reserving twice is a no-op,
-- and releasing gives back exactly what was taken, once.
CREATE TABLE stock_reservations (
    order_id   TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    state      TEXT NOT NULL CHECK (state IN ('reserved', 'released')),
    PRIMARY KEY (order_id, product_id)
);
