-- Customers whose MRR and last payment wait to be recomputed.
--
-- Why: every batch recomputed MRR and last payment for each customer it touched (one
-- statement, about 30-60 microseconds of PostgreSQL's CPU a customer). A batch of an import
-- touches nearly one customer per event, and a customer's events are spread over the whole
-- file: over 200,000 events of 20,000 customers that statement was 30% of PostgreSQL's time,
-- each customer recomputed about ten times. An import's batches now only list their customers
-- here (ON CONFLICT DO NOTHING: a few microseconds), and the import recomputes each listed
-- customer once at its end (`billing.settle_unsettled`); the worker does the same every few
-- seconds for what an import that died left behind. Nothing else reads MRR or the last payment
-- while a batch runs (segments do not), so only the API shows them late, until the import ends.
CREATE TABLE billing_unsettled (
    customer_id text PRIMARY KEY
);
