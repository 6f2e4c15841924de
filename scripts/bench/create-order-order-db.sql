-- pgbench: the statements one CreateOrder issues on the order service's
-- database, in order (services/order: Orders::create, OrderStore::insert,
-- the order.place saga's steps and saves, the final read). The product and
-- user are the benchmark's seeded ones, so the hot product row is shared
-- as in `mercato bench --scenario create-order`.
SELECT gen_random_uuid()::text AS oid, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now \gset
SELECT product_id, name, currency, price_minor, stock, created_at_us, updated_at_us FROM products WHERE product_id = 'pgbench-product';
BEGIN;
INSERT INTO orders (order_id, user_id, currency, total_minor, status, failure_reason, payment_id, payment_method, created_at_us, updated_at_us, request_id, fingerprint)
  VALUES (':oid', 'pgbench-user', 'USD', 100, 'PENDING', '', '', 'pm_approve', :now, :now, ':oid', 'fingerprint') ON CONFLICT DO NOTHING;
INSERT INTO order_items (order_id, product_id, quantity, unit_price_minor) VALUES (':oid', 'pgbench-product', 1, 100);
INSERT INTO sagas (saga_id, kind, status, step, context, failure_reason, deadline_us, lease_owner, lease_until_us, updated_at_us)
  VALUES (':oid', 'order.place', 'running', 0, '{"order_id":"x","user_id":"pgbench-user","items":[["pgbench-product",1]],"currency":"USD","total_minor":100,"payment_method":"pm_approve","payment_id":null}', '', :now + 30000000, 'runner', :now + 10000000, :now);
COMMIT;
UPDATE sagas SET status = 'running', step = 1, context = '{}', failure_reason = '', lease_until_us = :now + 10000000, updated_at_us = :now WHERE saga_id = ':oid' AND lease_owner = 'runner';
BEGIN;
INSERT INTO stock_reservations (order_id, product_id, quantity, state) VALUES (':oid', 'pgbench-product', 1, 'reserved') ON CONFLICT DO NOTHING;
UPDATE products SET stock = stock - 1, updated_at_us = :now WHERE product_id = 'pgbench-product' AND stock >= 1;
COMMIT;
UPDATE sagas SET status = 'running', step = 2, context = '{}', failure_reason = '', lease_until_us = :now + 10000000, updated_at_us = :now WHERE saga_id = ':oid' AND lease_owner = 'runner';
UPDATE orders SET payment_id = ':oid', updated_at_us = :now WHERE order_id = ':oid';
UPDATE sagas SET status = 'running', step = 3, context = '{}', failure_reason = '', lease_until_us = :now + 10000000, updated_at_us = :now WHERE saga_id = ':oid' AND lease_owner = 'runner';
UPDATE orders SET status = 'CONFIRMED', failure_reason = '', updated_at_us = :now WHERE order_id = ':oid' AND status = 'PENDING';
UPDATE sagas SET status = 'completed', step = 4, context = '{}', failure_reason = '', lease_until_us = :now + 10000000, updated_at_us = :now WHERE saga_id = ':oid' AND lease_owner = 'runner';
SELECT order_id, user_id, currency, total_minor, status, failure_reason, payment_id, payment_method, created_at_us, updated_at_us FROM orders WHERE order_id = ':oid';
SELECT product_id, quantity, unit_price_minor FROM order_items WHERE order_id = ':oid' ORDER BY product_id;
