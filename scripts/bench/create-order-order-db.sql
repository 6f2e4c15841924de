-- pgbench: the statements one CreateOrder issues on the order service's
-- database, in order (services/order: Orders::create, OrderStore::insert,
-- the order.place saga's steps, the final read). Each local step commits
-- with its saga-state write (Fence::hold first, Fence::advance last), so an
-- order costs four writing transactions. The product and user are the
-- benchmark's seeded ones, so the hot product row is shared as in
-- `mercato bench --scenario create-order`.
SELECT gen_random_uuid()::text AS oid, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now \gset
SELECT product_id, name, currency, price_minor, stock, created_at_us, updated_at_us FROM products WHERE product_id = 'pgbench-product';
BEGIN;
INSERT INTO orders (order_id, user_id, currency, total_minor, status, failure_reason, payment_id, payment_method, created_at_us, updated_at_us, request_id, fingerprint)
  VALUES (':oid', 'pgbench-user', 'USD', 100, 'PENDING', '', '', 'pm_approve', :now, :now, ':oid', 'fingerprint') ON CONFLICT DO NOTHING;
INSERT INTO order_items (order_id, product_id, quantity, unit_price_minor) VALUES (':oid', 'pgbench-product', 1, 100);
INSERT INTO sagas (saga_id, kind, status, step, context, failure_reason, deadline_us, lease_owner, lease_until_us, lease_epoch, updated_at_us)
  VALUES (':oid', 'order.place', 'running', 0, '{"order_id":"x","user_id":"pgbench-user","items":[["pgbench-product",1]],"currency":"USD","total_minor":100,"payment_method":"pm_approve","payment_id":null}', '', :now + 30000000, 'runner', :now + 10000000, 1, :now);
COMMIT;
-- validate_user: a call to the user service, nothing stored.
-- reserve_stock, its completion first (the hot row is locked from its UPDATE to the commit):
BEGIN;
UPDATE sagas SET lease_epoch = lease_epoch WHERE saga_id = ':oid' AND lease_epoch = 1;
UPDATE sagas SET status = 'running', step = 2, context = '{}', lease_until_us = :now + 10000000, updated_at_us = :now WHERE saga_id = ':oid' AND lease_epoch = 1;
INSERT INTO stock_reservations (order_id, product_id, quantity, state) VALUES (':oid', 'pgbench-product', 1, 'reserved') ON CONFLICT DO NOTHING;
UPDATE products SET stock = stock - 1, updated_at_us = :now WHERE product_id = 'pgbench-product' AND stock >= 1;
COMMIT;
-- charge_payment: the payment service's charge, then the payment id with the completion:
BEGIN;
UPDATE sagas SET lease_epoch = lease_epoch WHERE saga_id = ':oid' AND lease_epoch = 1;
UPDATE orders SET payment_id = ':oid', updated_at_us = :now WHERE order_id = ':oid';
UPDATE sagas SET status = 'running', step = 3, context = '{}', lease_until_us = :now + 10000000, updated_at_us = :now WHERE saga_id = ':oid' AND lease_epoch = 1;
COMMIT;
-- confirm_order (the pivot), completing the saga:
BEGIN;
UPDATE sagas SET lease_epoch = lease_epoch WHERE saga_id = ':oid' AND lease_epoch = 1;
UPDATE orders SET status = 'CONFIRMED', failure_reason = '', updated_at_us = :now WHERE order_id = ':oid' AND status = 'PENDING';
UPDATE sagas SET status = 'completed', step = 4, context = '{}', lease_until_us = :now + 10000000, updated_at_us = :now WHERE saga_id = ':oid' AND lease_epoch = 1;
COMMIT;
SELECT order_id, user_id, currency, total_minor, status, failure_reason, payment_id, payment_method, created_at_us, updated_at_us FROM orders WHERE order_id = ':oid';
SELECT product_id, quantity, unit_price_minor FROM order_items WHERE order_id = ':oid' ORDER BY product_id;
