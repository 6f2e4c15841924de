-- pgbench: the statements one CreateOrder's charge issues on the payment
-- service's database (services/payment: the idempotency key claimed by its
-- insert, with the id of its intent, which the simulated provider names by
-- our key; the intent created and confirmed at once, which stands in for a
-- real provider's own work; then the payment, its ledger entry and the
-- finished key in one statement): three commits, no BEGIN or COMMIT.
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
INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, recovery_point, lock_token, locked_until_us, created_at_us, request, intent_id)
  VALUES ('charge', (:run::bigint || '-' || :id::bigint), 'fingerprint', (:run::bigint || '-' || :id::bigint), 100, 'started', 'token', :now::bigint + 30000000, :now::bigint, '{}', 'sim_pi_' || (:run::bigint || '-' || :id::bigint)) ON CONFLICT DO NOTHING;
INSERT INTO simulated_provider_intents (intent_id, idempotency_key, order_id, currency, amount_minor, payment_method, status, decline_reason, created_at_us)
  VALUES ('sim_pi_' || (:run::bigint || '-' || :id::bigint), (:run::bigint || '-' || :id::bigint), 'order', 'USD', 100, 'pm_approve', 'succeeded', '', :now::bigint)
  ON CONFLICT DO NOTHING RETURNING intent_id, currency, amount_minor, status, decline_reason, payment_method;
WITH finished AS (
  UPDATE idempotency_keys SET recovery_point = 'finished'
  WHERE operation = 'charge' AND idempotency_key = (:run::bigint || '-' || :id::bigint) AND recovery_point = 'started' AND lock_token = 'token' RETURNING 1),
paid AS (
  INSERT INTO payments (payment_id, order_id, user_id, currency, amount_minor, refunded_minor, status, payment_method, decline_reason, created_at_us, updated_at_us)
  SELECT (:run::bigint || '-' || :id::bigint), (:run::bigint || '-' || :id::bigint), 'pgbench-user', 'USD', 100, 0, 'CAPTURED', 'pm_approve', '', :now::bigint, :now::bigint FROM finished RETURNING 1),
entry AS (
  INSERT INTO payment_ledger (entry_id, payment_id, kind, amount_minor, idempotency_key, provider_reference, created_at_us)
  SELECT (:run::bigint || '-' || :id::bigint) || '-entry', (:run::bigint || '-' || :id::bigint), 'CAPTURE', 100, (:run::bigint || '-' || :id::bigint), 'sim', :now::bigint FROM finished RETURNING 1)
SELECT count(*) AS finished FROM finished;
