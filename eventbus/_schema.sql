-- The eventbus schema. Run as a whole, under an advisory lock, whenever the
-- stored digest of this file differs from the running code's: every statement
-- is idempotent.

CREATE SCHEMA IF NOT EXISTS eventbus;

CREATE TABLE IF NOT EXISTS eventbus.meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

-- Positions are handed out by append_batch under the append lock, so they are
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
-- fastupdate off: with a pending list every condition check would scan it whole.
CREATE INDEX IF NOT EXISTS events_payload ON eventbus.events
    USING gin (payload jsonb_path_ops) WITH (fastupdate = off);

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

-- One batch of appends in one transaction.
--
-- p_append_of[i] is the (1-based) append that event i belongs to; events of an
-- append are contiguous and in order. p_conditions is null when no append has
-- a condition, else it holds one element per append: null, or
-- {"t": [types], "p": [predicates] or null, "a": after}.
--
-- For each append, in order: if all its ids are stored already with the same
-- content it is a retry ('duplicate': the stored positions are returned); if
-- some are stored it is 'id_conflict'; if an event matching its condition has
-- a position after "a", stored or appended earlier in this batch, it is
-- 'conflict'; otherwise 'ok'. Then all 'ok' events are inserted at once.
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
CREATE OR REPLACE FUNCTION eventbus.append_batch(
    p_append_of integer[],
    p_ids uuid[],
    p_types text[],
    p_payloads text[],
    p_metadata text[],
    p_conditions jsonb,
    p_check_ids boolean,
    p_origin text
) RETURNS TABLE (
    append_no integer,
    outcome text,
    event_id uuid,
    sequence_number bigint,
    occurred_at timestamptz
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_events integer := cardinality(p_ids);
    v_appends integer := p_append_of[cardinality(p_append_of)];
    v_ok boolean[];
    v_lo integer[];
    v_hi integer[];
    v_payloads jsonb[];
    v_stored uuid[];
    v_now timestamptz;
    v_base bigint;
    v_count integer := 0;
    v_cond jsonb;
    v_types text[];
    v_preds jsonb[];
    v_hit bigint;
    v_same integer;
    v_retry boolean;
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
            v_payloads := p_payloads::jsonb[];
        END IF;

        FOR j IN 1 .. v_appends LOOP
            v_hit := NULL;
            v_retry := coalesce(p_ids[v_lo[j]:v_hi[j]] && v_stored, false);
            v_cond := p_conditions -> (j - 1);
            IF jsonb_typeof(v_cond) = 'object' AND NOT v_retry THEN
                v_types := ARRAY(SELECT jsonb_array_elements_text(v_cond -> 't'));
                v_preds := CASE WHEN jsonb_typeof(v_cond -> 'p') = 'array'
                                THEN ARRAY(SELECT jsonb_array_elements(v_cond -> 'p')) END;
                -- EXECUTE plans the check with its actual values: a cached generic
                -- plan cannot use the GIN index for the payload predicates.
                EXECUTE 'SELECT e.sequence_number FROM eventbus.events e WHERE e.sequence_number > $1'
                    || CASE WHEN cardinality(v_types) > 0 THEN ' AND e.event_type = ANY ($2)' ELSE '' END
                    || CASE WHEN v_preds IS NOT NULL THEN ' AND e.payload @> ANY ($3)' ELSE '' END
                    || ' LIMIT 1'
                    INTO v_hit USING (v_cond ->> 'a')::bigint, v_types, v_preds;
                IF v_hit IS NOT NULL AND NOT p_check_ids THEN
                    -- the condition failed: maybe on this very append, stored before
                    v_retry := EXISTS (SELECT 1 FROM eventbus.events e
                                       WHERE e.event_id = ANY (p_ids[v_lo[j]:v_hi[j]]));
                ELSIF v_hit IS NULL AND v_lo[j] > 1 THEN
                    -- earlier appends of this batch are not in the table yet
                    SELECT 0 INTO v_hit
                    FROM unnest(p_append_of[1:v_lo[j] - 1], p_types[1:v_lo[j] - 1],
                                v_payloads[1:v_lo[j] - 1]) AS b(a, typ, payload)
                    WHERE v_ok[b.a]
                      AND (cardinality(v_types) = 0 OR b.typ = ANY (v_types))
                      AND (v_preds IS NULL OR b.payload @> ANY (v_preds))
                    LIMIT 1;
                END IF;
            END IF;

            IF v_retry THEN
                SELECT count(*) INTO v_same
                FROM unnest(p_ids[v_lo[j]:v_hi[j]], p_types[v_lo[j]:v_hi[j]],
                            p_payloads[v_lo[j]:v_hi[j]], p_metadata[v_lo[j]:v_hi[j]]) AS n(id, typ, payload, meta)
                JOIN eventbus.events e ON e.event_id = n.id AND e.event_type = n.typ
                    AND e.payload = n.payload::jsonb AND e.metadata = n.meta::jsonb;
                IF v_same = v_hi[j] - v_lo[j] + 1 THEN
                    RETURN QUERY
                    SELECT j, 'duplicate'::text, e.event_id, e.sequence_number, e.occurred_at
                    FROM eventbus.events e WHERE e.event_id = ANY (p_ids[v_lo[j]:v_hi[j]]);
                ELSE
                    RETURN QUERY SELECT j, 'id_conflict'::text, NULL::uuid, NULL::bigint, NULL::timestamptz;
                END IF;
            ELSIF v_hit IS NOT NULL THEN
                RETURN QUERY SELECT j, 'conflict'::text, NULL::uuid, v_hit, NULL::timestamptz;
            ELSE
                v_ok[j] := true;
                v_count := v_count + v_hi[j] - v_lo[j] + 1;
            END IF;
        END LOOP;
    END IF;

    IF v_count > 0 THEN
        SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO v_base
        FROM eventbus.event_position s;
        -- Positions follow the order of the arrays; the ids in RETURNING say
        -- which is which.
        RETURN QUERY
        INSERT INTO eventbus.events AS e (sequence_number, event_id, event_type, payload, metadata, occurred_at)
        SELECT v_base + row_number() OVER (ORDER BY n.ord), n.id, n.typ, n.payload::jsonb, n.meta::jsonb, v_now
        FROM unnest(p_append_of, p_ids, p_types, p_payloads, p_metadata)
             WITH ORDINALITY AS n(a, id, typ, payload, meta, ord)
        WHERE v_ok IS NULL OR v_ok[n.a]
        RETURNING 0, 'ok'::text, e.event_id, e.sequence_number, e.occurred_at;
        PERFORM setval('eventbus.event_position', v_base + v_count);
        PERFORM pg_notify('eventbus_events', p_origin || ' ' || (v_base + v_count)::text);
    END IF;
END
$$;
