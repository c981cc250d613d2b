-- The eventbus schema. Run as a whole, under an advisory lock, whenever the
-- stored digest of this file differs from the running code's: every statement
-- is idempotent.

CREATE SCHEMA IF NOT EXISTS eventbus;

CREATE TABLE IF NOT EXISTS eventbus.meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

-- Positions are handed out by append_events under the append lock, so they are
-- assigned and committed in order. The sequence only remembers the last one.
CREATE SEQUENCE IF NOT EXISTS eventbus.event_position AS bigint;

CREATE TABLE IF NOT EXISTS eventbus.events (
    sequence_number bigint PRIMARY KEY,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at timestamptz NOT NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON eventbus.events (event_id);
CREATE INDEX IF NOT EXISTS events_type_position ON eventbus.events (event_type, sequence_number);

-- The inverted index on payloads (see _tags.py): one row per scalar leaf of a
-- payload, as a 64-bit hash of its path and value, with the event's position.
-- "Has any event with this leaf come after position N?" is one index descent.
-- Tag 0 marks events with too many leaves to index one by one.
CREATE TABLE IF NOT EXISTS eventbus.event_tags (
    tag bigint NOT NULL,
    sequence_number bigint NOT NULL,
    PRIMARY KEY (tag, sequence_number)
);

-- One row per projection: the position up to which its read model reflects
-- every event. It is updated in the same transaction as the read model.
CREATE TABLE IF NOT EXISTS eventbus.projections (
    name text PRIMARY KEY,
    checkpoint bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Events a projection skipped (on_error = 'skip'), with the error.
CREATE TABLE IF NOT EXISTS eventbus.dead_letters (
    id bigserial PRIMARY KEY,
    projection text NOT NULL,
    sequence_number bigint NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    error text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_projection ON eventbus.dead_letters (projection, sequence_number);
-- A rebuild's copy writes its dead letters under its schema's name: they are
-- the read model's only once its swap clears the name (in the same
-- transaction), and go with the copy when it is dropped. Until then nothing
-- lists, counts or retries them: the live model may have applied those events.
ALTER TABLE eventbus.dead_letters ADD COLUMN IF NOT EXISTS copy_of text;

-- Move a projection's checkpoint from p_old to p_new, or fail if another
-- process moved it: the guard against two processes applying the same events.
CREATE OR REPLACE FUNCTION eventbus.advance_checkpoint(p_name text, p_old bigint, p_new bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE eventbus.projections SET checkpoint = p_new, updated_at = now()
    WHERE name = p_name AND checkpoint = p_old;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'projection % is not at checkpoint %', p_name, p_old USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;

-- Lock every table and view of a read model's schema, in name order. Readers
-- take ACCESS SHARE at the start of their transaction and a rebuild's swap
-- takes ACCESS EXCLUSIVE before it renames the schemas: both in one order, so
-- a reader that touches the tables in another order than the swap drops them
-- cannot deadlock with it. A reader that waits on the swap locks the new
-- tables once it commits (the names are looked up again after the wait).
CREATE OR REPLACE FUNCTION eventbus.lock_read_model(p_schema text, p_exclusive boolean) RETURNS void
-- The catalog lookup's generic plan is right for any schema, and planning it
-- anew on each call (the sessions' force_custom_plan) costs 0.3 ms.
LANGUAGE plpgsql SET plan_cache_mode = 'auto' AS $$
DECLARE
    v_tables text;
BEGIN
    -- One LOCK statement: it takes its tables' locks in the order listed.
    SELECT string_agg(format('%I.%I', p_schema, c.relname), ', ' ORDER BY c.relname COLLATE "C")
    INTO v_tables
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = p_schema AND c.relkind IN ('r', 'p', 'v');
    IF v_tables IS NOT NULL THEN
        EXECUTE 'LOCK TABLE ' || v_tables || ' IN '
            || CASE WHEN p_exclusive THEN 'ACCESS EXCLUSIVE' ELSE 'ACCESS SHARE' END || ' MODE';
    END IF;
END
$$;

-- Buses that listen for appends, so that writers notify only when a bus of
-- another process listens: a notification wakes every listening session, and
-- on a small machine that costs each commit a measurable delay (measured here:
-- 0.7 ms per sequential append without a listener, 1.3 ms with one). A row
-- whose session is gone only causes needless notifications until the next bus
-- to connect removes it.
CREATE TABLE IF NOT EXISTS eventbus.listeners (
    origin text PRIMARY KEY,
    pid integer NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
-- A bus opened without listening (listen=False) that runs projections is
-- here too, so that operators' tools see it, with listening false: writers
-- do not notify for it.
ALTER TABLE eventbus.listeners ADD COLUMN IF NOT EXISTS listening boolean NOT NULL DEFAULT true;

-- What each running bus's projections are doing, for operators whose command
-- line cannot see into the process (``eventbus status``): a bus writes its
-- rows when a state changes and deletes them when it closes. A row is current
-- while its origin listens (eventbus.listeners, with a live session); rows of
-- a process that died are removed by the next bus after a minute.
CREATE TABLE IF NOT EXISTS eventbus.projection_runners (
    projection text NOT NULL,
    origin text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    state text NOT NULL,
    leader boolean NOT NULL,
    restarts integer NOT NULL,
    last_error text,
    poison bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, origin)
);

-- Requests from the command line to the bus (origin) that runs a projection,
-- since only that process holds its handlers: rebuild it, resume it after a
-- failure (skipping its poison event), apply dead letters again. The bus
-- takes a pending request, carries it out and writes the outcome; the command
-- line follows the row.
CREATE TABLE IF NOT EXISTS eventbus.projection_requests (
    id bigserial PRIMARY KEY,
    projection text NOT NULL,
    origin text NOT NULL,
    action text NOT NULL CHECK (action IN ('rebuild', 'resume', 'retry')),
    skip_poison boolean NOT NULL DEFAULT false,
    dead_letters bigint[],
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed', 'withdrawn')),
    done bigint,
    total bigint,
    message text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS projection_requests_pending
    ON eventbus.projection_requests (origin, id) WHERE state = 'pending';

-- Appends are immutable: refuse UPDATE and DELETE on the events table.
CREATE OR REPLACE FUNCTION eventbus.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'eventbus.events is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE OR REPLACE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON eventbus.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventbus.refuse_change();

-- The position after p_cond.a of an event that matches the condition
-- p_cond = {"t": [types], "p": [predicates] or null, "k": [tag or null per
-- predicate], "a": after}, or null. Whether one exists is what counts: the
-- position (for the error message) is the first one found, not always the
-- first in order. Each lookup is written so that the plan
-- PostgreSQL caches for it is right for any values: the explicit loops keep
-- it from betting on a LIMIT and scanning the table.
CREATE OR REPLACE FUNCTION eventbus.first_match(p_cond jsonb) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_after bigint := (p_cond ->> 'a')::bigint;
    v_types text[] := ARRAY(SELECT jsonb_array_elements_text(p_cond -> 't'));
    v_any_type boolean := cardinality(v_types) = 0;
    v_preds jsonb := p_cond -> 'p';
    v_pred jsonb;
    v_tag bigint;
    v_seq bigint;
    v_type text;
    k integer;
BEGIN
    IF jsonb_typeof(v_preds) = 'array' THEN
        FOR k IN 0 .. jsonb_array_length(v_preds) - 1 LOOP
            v_pred := v_preds -> k;
            v_tag := (p_cond -> 'k' ->> k)::bigint;
            IF v_tag IS NULL THEN
                -- a predicate without a scalar leaf has no tag to narrow by
                FOR v_seq IN
                    SELECT e.sequence_number FROM eventbus.events e
                    WHERE e.sequence_number > v_after AND e.payload @> v_pred
                      AND (v_any_type OR e.event_type = ANY (v_types))
                    ORDER BY e.sequence_number
                LOOP
                    RETURN v_seq;
                END LOOP;
            ELSE
                -- events having the predicate's tag (or too many leaves to be
                -- tagged) after the position; usually none
                FOR v_seq IN
                    SELECT t.sequence_number FROM eventbus.event_tags t
                    WHERE t.tag IN (v_tag, 0) AND t.sequence_number > v_after
                LOOP
                    PERFORM 1 FROM eventbus.events e
                    WHERE e.sequence_number = v_seq AND e.payload @> v_pred
                      AND (v_any_type OR e.event_type = ANY (v_types));
                    IF FOUND THEN
                        RETURN v_seq;
                    END IF;
                END LOOP;
            END IF;
        END LOOP;
        RETURN NULL;
    END IF;
    IF v_any_type THEN
        SELECT e.sequence_number INTO v_seq FROM eventbus.events e
        WHERE e.sequence_number > v_after ORDER BY e.sequence_number LIMIT 1;
        RETURN v_seq;
    END IF;
    FOREACH v_type IN ARRAY v_types LOOP
        SELECT e.sequence_number INTO v_seq FROM eventbus.events e
        WHERE e.event_type = v_type AND e.sequence_number > v_after
        ORDER BY e.event_type, e.sequence_number LIMIT 1;
        IF v_seq IS NOT NULL THEN
            RETURN v_seq;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- A condition of several items (a DCB query: items OR'd): the position of
-- an event after "a" that matches any item, or null. Each item is one
-- first_match, with its own index probe.
CREATE OR REPLACE FUNCTION eventbus.first_match_any(p_items jsonb) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_item jsonb;
    v_seq bigint;
BEGIN
    FOR v_item IN SELECT value FROM jsonb_array_elements(p_items) LOOP
        v_seq := eventbus.first_match(v_item);
        IF v_seq IS NOT NULL THEN
            RETURN v_seq;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- One batch of appends in one transaction.
--
-- Events: p_append_of[i] is the (1-based) append that event i belongs to
-- (events of an append are contiguous and in order); p_tag_of[k] is the event
-- that tag p_tags[k] belongs to. p_conditions is null when no append has a
-- condition, else it holds one element per append: null, a condition as
-- first_match reads it, an array of them (any one matching is a conflict),
-- or {"g": [...]}, such an array whose items all have tags.
--
-- Conditions of the {"g": [...]} form are checked first, all of the batch's
-- in one statement: they all see the table as it was before the batch (its
-- events go in at the end), so this is what a check per append would find,
-- without a function call and two statements per item. For each item's
-- predicates the tag index is probed (its tag, and tag 0) with the position
-- in the index condition, and each candidate checked against its predicate
-- and the item's types; the plan is nested loops from the conditions to the
-- two primary keys whatever the values, so the cached generic plan stays
-- right. Tags are a row each, not "tag IN (x, 0)": that is planned as an OR
-- whose index scans leave the position to a filter, reading whole histories. (p_dep_of[m], p_dep_on[m]) says that an event of the earlier
-- append p_dep_on[m] matches the condition of append p_dep_of[m]: the caller
-- works that out, since those events are not in the table yet.
--
-- For each append, in order: if all its ids are stored already with the same
-- content it is a retry ('duplicate': the stored events are returned, as they
-- are stored: JSON holds 1 and 1.0 equal, and the caller gets the stored one); if
-- some are stored it is 'id_conflict'; if an event matching its condition has
-- a position after "a", stored or appended earlier in this batch, it is
-- 'conflict'; otherwise 'ok'. Then all 'ok' events (and their tags) are
-- inserted at once, at consecutive positions in the order of the arrays, and
-- one row tells them all: outcome 'ok', the first position, the commit time
-- and how many were stored (events_stored). The caller knows which appends
-- were refused or retries, so it can number the rest itself; a row per event
-- would cost the server, the wire and the driver as much again as the insert.
--
-- Stored ids are looked up first only with p_check_ids (or for an append whose
-- condition failed, which may be its own retry). Without it, a retry of an
-- unconditional append makes the insert fail on the unique index, and the
-- caller runs the batch again with p_check_ids: the common case pays nothing.
--
-- The transaction-level advisory lock serializes all appenders, in every
-- process: positions are committed in the order they are assigned, so a reader
-- that saw position N never later finds a new event below N. (Without it, a
-- slow transaction holding position 7 could commit after one holding 8.) Each
-- statement after the lock takes a fresh snapshot, so conditions see every
-- append committed before this one.
-- (It replaces append_batch, which answered with a row per stored event;
-- that one stays in databases that have it, for processes of earlier
-- versions still running during an upgrade.)
CREATE OR REPLACE FUNCTION eventbus.append_events(
    p_append_of integer[],
    p_ids uuid[],
    p_types text[],
    p_payloads text[],
    p_metadata text[],
    p_tag_of integer[],
    p_tags bigint[],
    p_conditions jsonb,
    p_dep_of integer[],
    p_dep_on integer[],
    p_check_ids boolean,
    p_origin text
) RETURNS TABLE (
    append_no integer,
    outcome text,
    event_id uuid,
    sequence_number bigint,
    occurred_at timestamptz,
    stored_type text,
    stored_payload jsonb,
    stored_metadata jsonb,
    events_stored integer
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_events integer := cardinality(p_ids);
    v_appends integer := p_append_of[cardinality(p_append_of)];
    v_ok boolean[];
    v_lo integer[];
    v_hi integer[];
    v_pos bigint[];
    v_stored uuid[];
    v_now timestamptz;
    v_base bigint;
    v_count integer := 0;
    v_cond jsonb;
    v_hit bigint;
    v_same integer;
    v_retry boolean;
    v_tagged bigint[];
    v_wide bigint;
    j integer;
    i integer;
BEGIN
    PERFORM pg_advisory_xact_lock(7243049117);
    v_now := clock_timestamp();

    IF p_conditions IS NULL AND NOT p_check_ids THEN
        v_count := v_events;
    ELSE
        v_ok := array_fill(false, ARRAY[v_appends]);
        v_lo := array_fill(0, ARRAY[v_appends]);
        v_hi := array_fill(0, ARRAY[v_appends]);
        FOR i IN 1 .. v_events LOOP
            j := p_append_of[i];
            IF v_lo[j] = 0 THEN v_lo[j] := i; END IF;
            v_hi[j] := i;
        END LOOP;
        IF p_check_ids THEN
            SELECT array_agg(e.event_id) INTO v_stored
            FROM eventbus.events e WHERE e.event_id = ANY (p_ids);
        END IF;

        IF p_conditions IS NOT NULL THEN
            v_tagged := array_fill(NULL::bigint, ARRAY[v_appends]);
            -- The last wide event (see WIDE in _tags.py): an item looks among wide
            -- events too only if one came after its position (most stores have none).
            SELECT max(t.sequence_number) INTO v_wide FROM eventbus.event_tags t WHERE t.tag = 0;
            FOR j, v_hit IN
                SELECT c.j::integer, h.seq
                FROM jsonb_array_elements(p_conditions) WITH ORDINALITY AS c (cond, j)
                CROSS JOIN LATERAL (
                    SELECT t.sequence_number AS seq
                    FROM jsonb_array_elements(c.cond -> 'g') AS it (item)
                    CROSS JOIN LATERAL jsonb_array_elements(it.item -> 'p') WITH ORDINALITY AS pr (pred, n)
                    CROSS JOIN LATERAL (
                        SELECT (it.item -> 'k' ->> (pr.n::integer - 1))::bigint
                        UNION ALL SELECT 0 WHERE v_wide > (it.item ->> 'a')::bigint
                    ) AS g (tag)
                    JOIN eventbus.event_tags t ON t.tag = g.tag AND t.sequence_number > (it.item ->> 'a')::bigint
                    JOIN eventbus.events e ON e.sequence_number = t.sequence_number
                    WHERE e.payload @> pr.pred
                      AND (jsonb_array_length(it.item -> 't') = 0 OR (it.item -> 't') ? e.event_type)
                    LIMIT 1
                ) AS h
                WHERE jsonb_typeof(c.cond) = 'object' AND c.cond ? 'g'
            LOOP
                v_tagged[j] := v_hit;
            END LOOP;
        END IF;

        FOR j IN 1 .. v_appends LOOP
            v_hit := NULL;
            v_retry := coalesce(p_ids[v_lo[j]:v_hi[j]] && v_stored, false);
            v_cond := p_conditions -> (j - 1);
            IF jsonb_typeof(v_cond) IN ('object', 'array') AND NOT v_retry THEN
                IF jsonb_typeof(v_cond) = 'object' THEN
                    IF v_cond ? 'g' THEN
                        v_hit := v_tagged[j];  -- found above
                    ELSE
                        v_hit := eventbus.first_match(v_cond);
                    END IF;
                ELSE
                    v_hit := eventbus.first_match_any(v_cond);
                END IF;
                IF v_hit IS NOT NULL AND NOT p_check_ids THEN
                    -- the condition failed: maybe on this very append, stored before
                    v_retry := EXISTS (SELECT 1 FROM eventbus.events e
                                       WHERE e.event_id = ANY (p_ids[v_lo[j]:v_hi[j]]));
                ELSIF v_hit IS NULL AND cardinality(p_dep_of) > 0 THEN
                    -- (a query per append only in a batch that has dependencies)
                    IF EXISTS (SELECT 1 FROM unnest(p_dep_of, p_dep_on) AS d(a, b) WHERE d.a = j AND v_ok[d.b]) THEN
                        v_hit := 0;  -- an earlier append of this batch matches
                    END IF;
                END IF;
            END IF;

            IF v_retry THEN
                SELECT count(*) INTO v_same
                FROM unnest(p_ids[v_lo[j]:v_hi[j]], p_types[v_lo[j]:v_hi[j]],
                            p_payloads[v_lo[j]:v_hi[j]], p_metadata[v_lo[j]:v_hi[j]]) AS n(id, typ, payload, meta)
                -- (a retry made in another trace carries another traceparent: still the same append)
                JOIN eventbus.events e ON e.event_id = n.id AND e.event_type = n.typ
                    AND e.payload = n.payload::jsonb AND e.metadata - 'traceparent' = n.meta::jsonb - 'traceparent';
                IF v_same = v_hi[j] - v_lo[j] + 1 THEN
                    RETURN QUERY
                    SELECT j, 'duplicate'::text, e.event_id, e.sequence_number, e.occurred_at,
                           e.event_type, e.payload, e.metadata, NULL::integer
                    FROM eventbus.events e WHERE e.event_id = ANY (p_ids[v_lo[j]:v_hi[j]]);
                ELSE
                    RETURN QUERY SELECT j, 'id_conflict'::text, NULL::uuid, NULL::bigint, NULL::timestamptz,
                                        NULL::text, NULL::jsonb, NULL::jsonb, NULL::integer;
                END IF;
            ELSIF v_hit IS NOT NULL THEN
                RETURN QUERY SELECT j, 'conflict'::text, NULL::uuid, v_hit, NULL::timestamptz,
                                    NULL::text, NULL::jsonb, NULL::jsonb, NULL::integer;
            ELSE
                v_ok[j] := true;
                v_count := v_count + v_hi[j] - v_lo[j] + 1;
            END IF;
        END LOOP;
    END IF;

    IF v_count > 0 THEN
        SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO v_base
        FROM eventbus.event_position s;
        -- Positions follow the order of the arrays.
        v_pos := array_fill(0::bigint, ARRAY[v_events]);
        v_count := 0;
        FOR i IN 1 .. v_events LOOP
            IF v_ok IS NULL OR v_ok[p_append_of[i]] THEN
                v_count := v_count + 1;
                v_pos[i] := v_base + v_count;
            END IF;
        END LOOP;
        INSERT INTO eventbus.events AS e (sequence_number, event_id, event_type, payload, metadata, occurred_at)
        SELECT v_pos[n.ord], n.id, n.typ, n.payload::jsonb, n.meta::jsonb, v_now
        FROM unnest(p_ids, p_types, p_payloads, p_metadata) WITH ORDINALITY AS n(id, typ, payload, meta, ord)
        WHERE v_pos[n.ord] > 0;
        INSERT INTO eventbus.event_tags (tag, sequence_number)
        SELECT t.tag, v_pos[t.ev] FROM unnest(p_tag_of, p_tags) AS t(ev, tag)
        WHERE v_pos[t.ev] > 0;
        PERFORM setval('eventbus.event_position', v_base + v_count);
        IF EXISTS (SELECT 1 FROM eventbus.listeners l WHERE l.origin <> p_origin AND l.listening) THEN
            PERFORM pg_notify('eventbus_events', p_origin || ' ' || (v_base + v_count)::text);
        END IF;
        RETURN QUERY SELECT 0, 'ok'::text, NULL::uuid, v_base + 1, v_now, NULL::text, NULL::jsonb, NULL::jsonb, v_count;
    END IF;
END
$$;

-- Partitioned projections (eventbus/_projections/_leases.py). A process that
-- runs one is a member while it renews its row; a partition belongs to the
-- process named in its lease until the lease expires. The epoch goes up with
-- every new owner: a batch commits only with the owner and epoch it was
-- started under (advance_lease), so a process that lost its lease never
-- commits for that partition again. Times are the server's clock alone.
CREATE TABLE IF NOT EXISTS eventbus.projection_members (
    projection text NOT NULL,
    member text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (projection, member)
);
CREATE TABLE IF NOT EXISTS eventbus.projection_leases (
    projection text NOT NULL,
    partition int NOT NULL,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    checkpoint bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (projection, partition)
);
-- The position of the last event a batch applied in the partition (an event
-- of the partition under the key it was applied with), or null: a process
-- checks at each heartbeat that its key puts each witness in its partition
-- (_partitioned.py). -1 once a process found that a key differs: then every
-- process stands by. A rebuild's swap clears them; a new count writes new rows.
ALTER TABLE eventbus.projection_leases ADD COLUMN IF NOT EXISTS witness bigint;

-- Move a partition's checkpoint to p_new (the last event of the batch, which
-- becomes its witness), or fail (SQLSTATE EB001) when the caller no longer
-- holds its lease under p_epoch.
CREATE OR REPLACE FUNCTION eventbus.advance_lease(
    p_name text, p_partition int, p_owner text, p_epoch bigint, p_new bigint
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE eventbus.projection_leases SET checkpoint = greatest(checkpoint, p_new),
        witness = CASE WHEN witness = -1 THEN -1 ELSE p_new END
    WHERE projection = p_name AND partition = p_partition AND owner = p_owner AND epoch = p_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'projection % partition %: the lease of epoch % is lost', p_name, p_partition, p_epoch
            USING ERRCODE = 'EB001';
    END IF;
END
$$;

-- A rebuild of a partitioned projection (eventbus/_projections/_partitioned_rebuild.py):
-- the one process that builds its copy, while it renews this row. Another
-- rebuild waits for the row to expire (its builder killed) before it drops
-- the copy left behind and builds its own.
CREATE TABLE IF NOT EXISTS eventbus.projection_rebuilds (
    projection text PRIMARY KEY,
    owner text NOT NULL,
    expires_at timestamptz NOT NULL
);
