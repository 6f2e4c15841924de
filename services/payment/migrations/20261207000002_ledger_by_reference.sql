-- Reconciliation finds the ledger's capture of a provider's intent by its
-- id, and a window's payments by their creation time.
CREATE INDEX payment_ledger_by_reference ON payment_ledger (provider_reference);
CREATE INDEX payments_by_created ON payments (created_at_us);
