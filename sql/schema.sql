-- The schema after every migration in sql/, as `pg_dump --schema-only` writes it for the
-- default STRIPELINE_SCHEMA (comments, SET lines and ownership left out). Generated, never edited:
-- tests/app/test_schema.py checks it and says how to rewrite it after adding a migration.

CREATE SCHEMA stripeline;

CREATE FUNCTION stripeline.count_deleted_events() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO stripe_event_counts (status, n)
    SELECT status, -count(*) FROM deleted GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION stripeline.count_inserted_events() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO stripe_event_counts (status, n)
    SELECT status, count(*) FROM inserted GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION stripeline.count_outcome_minute() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO stripe_event_minutes (minute, processed, failed)
    SELECT date_trunc('minute', now()), after.processed - before.processed, after.attempts - before.attempts
    FROM (SELECT count(*) FILTER (WHERE status IN ('processed', 'ignored')) AS processed,
                 coalesce(sum(attempts), 0) AS attempts FROM after_update) AS after,
         (SELECT count(*) FILTER (WHERE status IN ('processed', 'ignored')) AS processed,
                 coalesce(sum(attempts), 0) AS attempts FROM before_update) AS before
    WHERE after.processed <> before.processed OR after.attempts <> before.attempts;
    RETURN NULL;
END $$;

CREATE FUNCTION stripeline.count_received_minute() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO stripe_event_minutes (minute, received, processed)
    SELECT date_trunc('minute', now()), count(*), count(*) FILTER (WHERE status IN ('processed', 'ignored'))
    FROM inserted HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION stripeline.count_status_changes() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO stripe_event_counts (status, n)
    SELECT status, sum(n) FROM (
        SELECT status, count(*) AS n FROM after_update GROUP BY status
        UNION ALL
        SELECT status, -count(*) FROM before_update GROUP BY status
    ) AS changes
    GROUP BY status
    HAVING sum(n) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION stripeline.forget_event_counts() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    DELETE FROM stripe_event_counts;
    RETURN NULL;
END $$;

CREATE FUNCTION stripeline.record_event_mentions() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
BEGIN
    NEW.mentions := jsonb_path_query_array(NEW.payload::jsonb, 'strict $.** ? (@.type() == "string")');
    RETURN NEW;
END $_$;

CREATE TABLE stripeline.backfill_cursors (
    run_id bigint NOT NULL,
    resource text NOT NULL,
    snapshot_at timestamp with time zone NOT NULL,
    starting_after text,
    listed bigint DEFAULT 0 NOT NULL,
    finished_at timestamp with time zone
);

CREATE TABLE stripeline.backfill_runs (
    id bigint NOT NULL,
    only_new boolean NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    events_since timestamp with time zone NOT NULL,
    finished_at timestamp with time zone
);

CREATE SEQUENCE stripeline.backfill_runs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE stripeline.backfill_runs_id_seq OWNED BY stripeline.backfill_runs.id;

CREATE TABLE stripeline.billing_unsettled (
    customer_id text NOT NULL
);

CREATE TABLE stripeline.customer_activity (
    customer_id text NOT NULL,
    at timestamp with time zone NOT NULL
);

CREATE TABLE stripeline.customer_attributes (
    customer_id text NOT NULL,
    attributes jsonb DEFAULT '{}'::jsonb NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT customer_attributes_attributes_check CHECK ((jsonb_typeof(attributes) = 'object'::text))
);

CREATE TABLE stripeline.customer_tags (
    customer_id text NOT NULL,
    tag text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT customer_tags_tag_check CHECK (((tag <> ''::text) AND (length(tag) <= 100)))
);

CREATE TABLE stripeline.customer_tombstones (
    customer_id text NOT NULL,
    account text,
    deleted_at timestamp with time zone NOT NULL,
    event_id text NOT NULL,
    mentions_scrubbed_at timestamp with time zone
);

CREATE TABLE stripeline.customers (
    id text NOT NULL,
    account text,
    livemode boolean,
    email text,
    name text,
    phone text,
    description text,
    address jsonb,
    delinquent boolean DEFAULT false NOT NULL,
    currency text,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone,
    deleted_in_stripe boolean DEFAULT false NOT NULL,
    deleted_at timestamp with time zone,
    mrr bigint DEFAULT 0 NOT NULL,
    last_payment_id text,
    last_payment_amount bigint,
    last_payment_currency text,
    last_payment_description text,
    last_payment_at timestamp with time zone,
    event_created timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    event_rank smallint DEFAULT 0 NOT NULL,
    event_id text,
    last_synced_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE stripeline.discounts (
    id text NOT NULL,
    account text,
    customer_id text,
    subscription_id text,
    coupon jsonb NOT NULL,
    start_at timestamp with time zone,
    end_at timestamp with time zone,
    deleted boolean DEFAULT false NOT NULL,
    event_created timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    event_rank smallint DEFAULT 0 NOT NULL,
    event_id text,
    last_synced_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE stripeline.invoices (
    id text NOT NULL,
    account text,
    customer_id text,
    subscription_id text,
    status text,
    number text,
    billing_reason text,
    currency text,
    amount_due bigint,
    amount_paid bigint,
    amount_remaining bigint,
    total bigint,
    description text,
    created_at timestamp with time zone,
    period_start timestamp with time zone,
    period_end timestamp with time zone,
    due_date timestamp with time zone,
    paid_at timestamp with time zone,
    attempt_count integer,
    next_payment_attempt timestamp with time zone,
    deleted boolean DEFAULT false NOT NULL,
    event_created timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    event_rank smallint DEFAULT 0 NOT NULL,
    event_id text,
    last_synced_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT invoices_status_check CHECK ((status = ANY (ARRAY['draft'::text, 'open'::text, 'paid'::text, 'void'::text, 'uncollectible'::text])))
);

CREATE TABLE stripeline.outbox (
    id bigint NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    last_error text
);

CREATE SEQUENCE stripeline.outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE stripeline.outbox_id_seq OWNED BY stripeline.outbox.id;

CREATE TABLE stripeline.payments (
    id text NOT NULL,
    account text,
    kind text NOT NULL,
    customer_id text,
    invoice_id text,
    payment_intent_id text,
    status text,
    amount bigint NOT NULL,
    amount_refunded bigint DEFAULT 0 NOT NULL,
    currency text NOT NULL,
    description text,
    failure_code text,
    created_at timestamp with time zone,
    paid_at timestamp with time zone,
    event_created timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    event_rank smallint DEFAULT 0 NOT NULL,
    event_id text,
    last_synced_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT payments_kind_check CHECK ((kind = ANY (ARRAY['charge'::text, 'invoice_payment'::text])))
);

CREATE TABLE stripeline.prices (
    id text NOT NULL,
    account text,
    product_id text,
    active boolean,
    currency text,
    unit_amount bigint,
    type text,
    "interval" text,
    interval_count integer,
    usage_type text,
    nickname text,
    deleted boolean DEFAULT false NOT NULL,
    event_created timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    event_rank smallint DEFAULT 0 NOT NULL,
    event_id text,
    last_synced_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT prices_interval_check CHECK (("interval" = ANY (ARRAY['day'::text, 'week'::text, 'month'::text, 'year'::text]))),
    CONSTRAINT prices_interval_count_check CHECK ((interval_count > 0))
);

CREATE TABLE stripeline.products (
    id text NOT NULL,
    account text,
    name text,
    active boolean,
    deleted boolean DEFAULT false NOT NULL,
    event_created timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    event_rank smallint DEFAULT 0 NOT NULL,
    event_id text,
    last_synced_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE stripeline.replay_rebuilds (
    singleton boolean DEFAULT true NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    through_received_at timestamp with time zone NOT NULL,
    after_created timestamp with time zone,
    after_id text,
    events_done bigint DEFAULT 0 NOT NULL,
    events_total bigint NOT NULL,
    lane_after_created timestamp with time zone[],
    lane_after_id text[],
    lane_hash text,
    CONSTRAINT replay_rebuilds_lane_hash_check CHECK ((lane_hash = 'hashtextextended'::text)),
    CONSTRAINT replay_rebuilds_singleton_check CHECK (singleton)
);

CREATE TABLE stripeline.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE stripeline.segment_evaluations (
    customer_id text NOT NULL,
    segments bigint DEFAULT 0 NOT NULL,
    review_at timestamp with time zone
);

CREATE TABLE stripeline.segment_history (
    id bigint NOT NULL,
    segment text NOT NULL,
    customer_id text NOT NULL,
    change text NOT NULL,
    at timestamp with time zone NOT NULL,
    cause text NOT NULL,
    CONSTRAINT segment_history_change_check CHECK ((change = ANY (ARRAY['entered'::text, 'exited'::text])))
);

CREATE SEQUENCE stripeline.segment_history_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE stripeline.segment_history_id_seq OWNED BY stripeline.segment_history.id;

CREATE TABLE stripeline.segment_memberships (
    segment text NOT NULL,
    customer_id text NOT NULL,
    entered_at timestamp with time zone NOT NULL
);

CREATE TABLE stripeline.segment_refresh_state (
    singleton boolean DEFAULT true NOT NULL,
    definitions text,
    refreshed_at timestamp with time zone,
    CONSTRAINT segment_refresh_state_singleton_check CHECK (singleton)
);

CREATE TABLE stripeline.stripe_event_counts (
    status text NOT NULL,
    n bigint NOT NULL
);

CREATE TABLE stripeline.stripe_event_minutes (
    minute timestamp with time zone NOT NULL,
    received bigint DEFAULT 0 NOT NULL,
    processed bigint DEFAULT 0 NOT NULL,
    failed bigint DEFAULT 0 NOT NULL
);

CREATE TABLE stripeline.stripe_events (
    id text NOT NULL,
    type text NOT NULL,
    account text,
    livemode boolean DEFAULT false NOT NULL,
    api_version text,
    created timestamp with time zone NOT NULL,
    object_type text,
    object_id text,
    customer_id text,
    payload json NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    next_attempt_at timestamp with time zone,
    processed_at timestamp with time zone,
    mentions jsonb,
    CONSTRAINT stripe_events_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT stripe_events_id_check CHECK ((id <> ''::text)),
    CONSTRAINT stripe_events_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'processed'::text, 'ignored'::text, 'failed'::text]))),
    CONSTRAINT stripe_events_type_check CHECK ((type <> ''::text))
);
ALTER TABLE ONLY stripeline.stripe_events ALTER COLUMN payload SET COMPRESSION lz4;

CREATE TABLE stripeline.subscription_items (
    id text NOT NULL,
    subscription_id text NOT NULL,
    price_id text,
    product_id text,
    quantity integer DEFAULT 1 NOT NULL,
    current_period_start timestamp with time zone,
    current_period_end timestamp with time zone,
    CONSTRAINT subscription_items_quantity_check CHECK ((quantity >= 0))
);

CREATE TABLE stripeline.subscriptions (
    id text NOT NULL,
    account text,
    customer_id text NOT NULL,
    status text NOT NULL,
    currency text,
    created_at timestamp with time zone,
    trial_start timestamp with time zone,
    trial_end timestamp with time zone,
    canceled_at timestamp with time zone,
    ended_at timestamp with time zone,
    cancel_at timestamp with time zone,
    cancel_at_period_end boolean DEFAULT false NOT NULL,
    current_period_start timestamp with time zone,
    current_period_end timestamp with time zone,
    discount_ids jsonb,
    mrr bigint DEFAULT 0 NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    event_created timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    event_rank smallint DEFAULT 0 NOT NULL,
    event_id text,
    last_synced_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT subscriptions_status_check CHECK ((status = ANY (ARRAY['incomplete'::text, 'incomplete_expired'::text, 'trialing'::text, 'active'::text, 'past_due'::text, 'canceled'::text, 'unpaid'::text, 'paused'::text])))
);

CREATE TABLE stripeline.worker_metrics (
    worker text NOT NULL,
    started_at timestamp with time zone NOT NULL,
    pushed_at timestamp with time zone NOT NULL,
    metrics jsonb NOT NULL
);

ALTER TABLE ONLY stripeline.backfill_runs ALTER COLUMN id SET DEFAULT nextval('stripeline.backfill_runs_id_seq'::regclass);

ALTER TABLE ONLY stripeline.outbox ALTER COLUMN id SET DEFAULT nextval('stripeline.outbox_id_seq'::regclass);

ALTER TABLE ONLY stripeline.segment_history ALTER COLUMN id SET DEFAULT nextval('stripeline.segment_history_id_seq'::regclass);

ALTER TABLE ONLY stripeline.backfill_cursors
    ADD CONSTRAINT backfill_cursors_pkey PRIMARY KEY (run_id, resource);

ALTER TABLE ONLY stripeline.backfill_runs
    ADD CONSTRAINT backfill_runs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.billing_unsettled
    ADD CONSTRAINT billing_unsettled_pkey PRIMARY KEY (customer_id);

ALTER TABLE ONLY stripeline.customer_activity
    ADD CONSTRAINT customer_activity_pkey PRIMARY KEY (customer_id, at);

ALTER TABLE ONLY stripeline.customer_attributes
    ADD CONSTRAINT customer_attributes_pkey PRIMARY KEY (customer_id);

ALTER TABLE ONLY stripeline.customer_tags
    ADD CONSTRAINT customer_tags_pkey PRIMARY KEY (customer_id, tag);

ALTER TABLE ONLY stripeline.customer_tombstones
    ADD CONSTRAINT customer_tombstones_pkey PRIMARY KEY (customer_id);

ALTER TABLE ONLY stripeline.customers
    ADD CONSTRAINT customers_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.discounts
    ADD CONSTRAINT discounts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.invoices
    ADD CONSTRAINT invoices_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.payments
    ADD CONSTRAINT payments_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.prices
    ADD CONSTRAINT prices_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.products
    ADD CONSTRAINT products_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.replay_rebuilds
    ADD CONSTRAINT replay_rebuilds_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY stripeline.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY stripeline.segment_evaluations
    ADD CONSTRAINT segment_evaluations_pkey PRIMARY KEY (customer_id) INCLUDE (segments, review_at);

ALTER TABLE ONLY stripeline.segment_history
    ADD CONSTRAINT segment_history_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.segment_memberships
    ADD CONSTRAINT segment_memberships_pkey PRIMARY KEY (segment, customer_id);

ALTER TABLE ONLY stripeline.segment_refresh_state
    ADD CONSTRAINT segment_refresh_state_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY stripeline.stripe_events
    ADD CONSTRAINT stripe_events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.subscription_items
    ADD CONSTRAINT subscription_items_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.subscriptions
    ADD CONSTRAINT subscriptions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stripeline.worker_metrics
    ADD CONSTRAINT worker_metrics_pkey PRIMARY KEY (worker);

CREATE INDEX customers_email_idx ON stripeline.customers USING btree (lower(email)) WHERE (email IS NOT NULL);

CREATE INDEX customers_email_prefix_idx ON stripeline.customers USING btree (lower(email) text_pattern_ops) WHERE (email IS NOT NULL);

CREATE INDEX customers_id_prefix_idx ON stripeline.customers USING btree (lower(id) text_pattern_ops);

CREATE INDEX customers_name_prefix_idx ON stripeline.customers USING btree (lower(name) text_pattern_ops) WHERE (name IS NOT NULL);

CREATE INDEX discounts_customer_idx ON stripeline.discounts USING btree (customer_id);

CREATE INDEX discounts_subscription_idx ON stripeline.discounts USING btree (subscription_id) WHERE (subscription_id IS NOT NULL);

CREATE INDEX invoices_customer_idx ON stripeline.invoices USING btree (customer_id);

CREATE INDEX outbox_due_idx ON stripeline.outbox USING btree (next_attempt_at);

CREATE INDEX payments_customer_idx ON stripeline.payments USING btree (customer_id, paid_at);

CREATE INDEX payments_invoice_idx ON stripeline.payments USING btree (invoice_id) WHERE (invoice_id IS NOT NULL);

CREATE INDEX segment_evaluations_review_idx ON stripeline.segment_evaluations USING btree (review_at) WHERE (review_at IS NOT NULL);

CREATE INDEX segment_history_customer_idx ON stripeline.segment_history USING btree (customer_id);

CREATE INDEX segment_history_segment_idx ON stripeline.segment_history USING btree (segment, at, id);

CREATE INDEX segment_memberships_customer_idx ON stripeline.segment_memberships USING btree (customer_id);

CREATE INDEX stripe_event_minutes_minute_idx ON stripeline.stripe_event_minutes USING btree (minute);

CREATE INDEX stripe_events_created_idx ON stripeline.stripe_events USING btree (created, id);

CREATE INDEX stripe_events_customer_idx ON stripeline.stripe_events USING btree (customer_id, created) WHERE (customer_id IS NOT NULL);

CREATE INDEX stripe_events_mentions_idx ON stripeline.stripe_events USING gin (mentions) WHERE (customer_id IS NULL);

CREATE INDEX stripe_events_object_idx ON stripeline.stripe_events USING btree (object_id, created) WHERE (object_id IS NOT NULL);

CREATE INDEX stripe_events_received_idx ON stripeline.stripe_events USING btree (received_at);

CREATE INDEX stripe_events_unfinished_idx ON stripeline.stripe_events USING btree (received_at) WHERE (status = ANY (ARRAY['pending'::text, 'failed'::text]));

CREATE INDEX subscription_items_subscription_idx ON stripeline.subscription_items USING btree (subscription_id);

CREATE INDEX subscriptions_customer_idx ON stripeline.subscriptions USING btree (customer_id);

CREATE INDEX subscriptions_segment_facts_idx ON stripeline.subscriptions USING btree (customer_id) INCLUDE (status, trial_end);

CREATE TRIGGER stripe_events_counted_delete AFTER DELETE ON stripeline.stripe_events REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION stripeline.count_deleted_events();

CREATE TRIGGER stripe_events_counted_insert AFTER INSERT ON stripeline.stripe_events REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION stripeline.count_inserted_events();

CREATE TRIGGER stripe_events_counted_truncate AFTER TRUNCATE ON stripeline.stripe_events FOR EACH STATEMENT EXECUTE FUNCTION stripeline.forget_event_counts();

CREATE TRIGGER stripe_events_counted_update AFTER UPDATE ON stripeline.stripe_events REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update FOR EACH STATEMENT EXECUTE FUNCTION stripeline.count_status_changes();

CREATE TRIGGER stripe_events_mentions BEFORE INSERT OR UPDATE OF payload ON stripeline.stripe_events FOR EACH ROW WHEN ((new.customer_id IS NULL)) EXECUTE FUNCTION stripeline.record_event_mentions();

CREATE TRIGGER stripe_events_minute_insert AFTER INSERT ON stripeline.stripe_events REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION stripeline.count_received_minute();

CREATE TRIGGER stripe_events_minute_update AFTER UPDATE ON stripeline.stripe_events REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update FOR EACH STATEMENT EXECUTE FUNCTION stripeline.count_outcome_minute();

ALTER TABLE ONLY stripeline.backfill_cursors
    ADD CONSTRAINT backfill_cursors_run_id_fkey FOREIGN KEY (run_id) REFERENCES stripeline.backfill_runs(id) ON DELETE CASCADE;

ALTER TABLE ONLY stripeline.subscription_items
    ADD CONSTRAINT subscription_items_subscription_id_fkey FOREIGN KEY (subscription_id) REFERENCES stripeline.subscriptions(id) ON DELETE CASCADE;
