-- pgbench: the statements one CreateOrder issues on the order service's
-- database, in order (services/order: Orders::create, OrderStore::insert_with_stock,
-- the order.place saga's steps). On Postgres each write is
-- one statement — an implicit transaction — that also records the saga's
-- progress (mercato_saga::fence_cte), so an order costs two writing
-- statements and no BEGIN or COMMIT. The product and user are the
-- benchmark's seeded ones, so the hot product row is shared as in
-- `mercato bench --scenario create-order`.
-- Run it as scripts/bench.sh does, `pgbench -n -M prepared -D seq=0 -D
-- run=<epoch seconds> -D now=<epoch microseconds>`: prepared once per
-- connection, as sqlx prepares every statement of the services (the
-- variables are parameters, hence their casts). The ids are made by
-- pgbench itself, as the services make theirs without asking the
-- database: each client counts its own (`seq` lives on between a client's
-- transactions), so like the services' UUIDv7s they grow over time; `run`
-- keeps them apart from an earlier run's on the same database.
\set seq :seq + 1
\set id (:client_id + 1) * 1000000000000 + :seq
-- the order, its line, its saga (past validate_user, which ran ahead as a
-- call to the user service, and reserve_stock) and its stock; the hot row
-- is locked only while this statement runs and commits (one product, so no
-- FOR UPDATE in id order). The products' prices come from memory.
WITH placed AS (
  INSERT INTO orders (order_id, user_id, currency, total_minor, status, failure_reason, payment_id, payment_method, created_at_us, updated_at_us, request_id, fingerprint)
  VALUES ((:run::bigint || '-' || :id::bigint), 'pgbench-user', 'USD', 100, 'PENDING', '', '', 'pm_approve', :now::bigint, :now::bigint, (:run::bigint || '-' || :id::bigint), 'fingerprint') ON CONFLICT DO NOTHING RETURNING order_id),
lines AS (
  INSERT INTO order_items (order_id, product_id, quantity, unit_price_minor)
  SELECT placed.order_id, l.product_id, l.quantity, l.unit_price_minor FROM placed, (VALUES ('pgbench-product'::text, 1::bigint, 100::bigint)) AS l (product_id, quantity, unit_price_minor)
  RETURNING product_id, quantity),
saga AS (
  INSERT INTO sagas (saga_id, kind, status, step, context, failure_reason, deadline_us, lease_owner, lease_until_us, lease_epoch, updated_at_us)
  SELECT (:run::bigint || '-' || :id::bigint), 'order.place', 'running', 2, json_build_object('order_id', 'x', 'user_id', 'pgbench-user', 'items', json_build_array(json_build_array('pgbench-product', 1)), 'currency', 'USD', 'total_minor', 100, 'payment_method', 'pm_approve', 'payment_id', NULL)::text, '', :now::bigint + 30000000, 'runner', :now::bigint + 10000000, 1, :now::bigint FROM placed RETURNING 1),
taken AS (
  INSERT INTO stock_reservations (order_id, product_id, quantity, state)
  SELECT (:run::bigint || '-' || :id::bigint), product_id, quantity, 'reserved' FROM lines RETURNING product_id, quantity),
locked AS (SELECT product_id, quantity FROM taken),
stock AS (
  UPDATE products SET stock = products.stock - locked.quantity, updated_at_us = :now::bigint FROM locked WHERE products.product_id = locked.product_id RETURNING 1)
SELECT placed, CASE WHEN NOT (taken = updated) THEN 1 / (SELECT 0 WHERE random() >= 0) END AS guard
FROM (SELECT (SELECT count(*) FROM placed) AS placed, (SELECT count(*) FROM taken) AS taken, (SELECT count(*) FROM stock) AS updated) n;
-- charge_payment: the payment service's charge; nothing stored here (its
-- payment id commits with the confirmation).
-- confirm_order (the pivot) with the payment id, completing the saga:
WITH fence AS (
  UPDATE sagas SET status = 'completed', step = 4, context = '{}', lease_until_us = GREATEST(lease_until_us, :now::bigint + 10000000), updated_at_us = :now::bigint
  WHERE saga_id = (:run::bigint || '-' || :id::bigint) AND lease_epoch = 1 AND EXISTS (SELECT 1 FROM orders WHERE order_id = (:run::bigint || '-' || :id::bigint) AND status = 'PENDING') RETURNING 1),
moved AS (UPDATE orders SET status = 'CONFIRMED', failure_reason = '', updated_at_us = :now::bigint, payment_id = COALESCE((:run::bigint || '-' || :id::bigint), payment_id) WHERE order_id = (:run::bigint || '-' || :id::bigint) AND status = 'PENDING' AND EXISTS (SELECT 1 FROM fence) RETURNING 1)
SELECT held, CASE WHEN NOT (held = moved) THEN 1 / (SELECT 0 WHERE random() >= 0) END AS guard
FROM (SELECT (SELECT count(*) FROM fence) AS held, (SELECT count(*) FROM moved) AS moved) n;
