-- Reconciliation finds the ledger's capture of a provider's intent by its id.
CREATE INDEX payment_ledger_by_reference ON payment_ledger (provider_reference);
