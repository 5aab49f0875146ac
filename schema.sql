-- labctl: the whole database. Applied by `labctl db upgrade` (and on first
-- connect) to an empty database; later versions arrive as upgrade steps in
-- labctl/migrations/, and a test checks that upgrading gives exactly this.
--
-- labctl   : the event log (source of truth) and operational tables
-- live     : projection tables (read models), rebuilt from the log at will
--
-- Nothing lives in public, so an original labctl registry (its own runs,
-- events, ... tables there) can share the database while a group switches.

CREATE SCHEMA labctl;
SET LOCAL search_path = labctl;

CREATE TABLE schema_version (
    version     integer     NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- event log
--
-- The log belongs to the role labctl_owner (see labctl/roles.sql). Everyone
-- else reads it and appends only through labctl_append, a SECURITY DEFINER
-- function: not even labctl's own role can alter, delete, disable the
-- trigger below, or replace the function.
--
-- data is json, not jsonb: the log keeps each event's text exactly as its
-- writer encoded it, which is also the text its hash covers, so neither an
-- append nor a reader pays for turning jsonb back into text. (Events written
-- before schema 10 hold the text jsonb gave them, which their hashes cover.)
-- Cast to jsonb for containment or path queries.

CREATE TABLE events (
    position     bigint      PRIMARY KEY,
    stream       text        NOT NULL,
    version      integer     NOT NULL CHECK (version > 0),
    type         text        NOT NULL,
    data         json        NOT NULL,
    meta         jsonb       NOT NULL DEFAULT '{}',
    recorded_at  timestamptz NOT NULL,
    hash         bytea       NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream, version)
);

CREATE TABLE event_idempotency (
    key          text        PRIMARY KEY,
    positions    bigint[]    NOT NULL,
    recorded_at  timestamptz NOT NULL
);

-- Which bytes each event's hash covers, by the first position an encoding
-- applies to: 1 = fields joined by \x1f (logs written before schema 7),
-- 2 = length-prefixed fields (labctl_event_payload). The verifier, in
-- Python, reads this and never calls a function stored in the database.
CREATE TABLE event_hash_encodings (
    encoding       integer PRIMARY KEY,
    from_position  bigint  NOT NULL UNIQUE
);

-- Each successful `labctl audit verify`: the position and hash it verified up
-- to. The next verify starts there (incremental), and a log that now ends
-- before a verified position, or has another hash there, was truncated.
CREATE TABLE audit_checkpoints (
    position     bigint      NOT NULL,
    hash         bytea       NOT NULL,
    verified_at  timestamptz NOT NULL DEFAULT now(),
    verified_by  text        NOT NULL DEFAULT session_user
);
CREATE INDEX audit_checkpoints_verified_at_idx ON audit_checkpoints (verified_at DESC);

-- The bytes of one event that its hash covers (encoding 2): position,
-- version and recorded_at (microseconds since 1970) as big-endian integers,
-- then stream, type, data and meta as UTF-8 text, each after its length.
-- Nothing can be moved from one field into the next without changing a length.
-- p_data and p_meta are the stored values' text. One expression, so the planner inlines it.
CREATE FUNCTION labctl_event_payload(
    p_position bigint, p_stream text, p_version integer,
    p_type text, p_data text, p_meta text, p_recorded_at timestamptz
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT int8send(p_position) || int4send(p_version)
        || int8send((extract(epoch FROM p_recorded_at) * 1000000)::bigint)
        || int4send(octet_length(p_stream)) || convert_to(p_stream, 'UTF8')
        || int4send(octet_length(p_type)) || convert_to(p_type, 'UTF8')
        || int4send(octet_length(p_data)) || convert_to(p_data, 'UTF8')
        || int4send(octet_length(p_meta)) || convert_to(p_meta, 'UTF8')
$$;

-- True when the session is a person's own role (a member of labctl_user that
-- is neither a superuser nor a service account): their events carry the
-- session's role as the actor, whatever the client says.
CREATE FUNCTION labctl_session_is_personal() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT r.rolsuper
       AND pg_has_role(session_user, 'labctl_user', 'MEMBER')
       AND NOT pg_has_role(session_user, 'labctl_service', 'MEMBER')
    FROM pg_roles r WHERE r.rolname = session_user
$$;

-- Append events to one or more streams in one transaction.
--
-- Appends are serialized by a transaction-scoped advisory lock, and positions
-- are the last one + 1, 2, ... under it: they are handed out in commit order
-- (a reader of "after P" can never miss an event that commits later with a
-- smaller position), a rolled-back append leaves no hole (so a deleted event
-- is a visible gap), and the hash chain has one well-defined predecessor.
--
-- p_expected[i], when not NULL, is the version event i's stream must be at
-- just before event i (0 = a new stream), counting earlier events of the batch.
-- p_data is each event's JSON text (checked by json's input function, and
-- stored and hashed as it is); every event of a call shares one p_meta. The events get positions
-- out_first_position, +1, ...; out_replayed_positions is NULL unless the
-- idempotency key was used before, and then holds that append's positions.
-- Plans are generic: a custom plan would copy the argument arrays into every plan.
CREATE FUNCTION labctl_append(
    p_streams text[], p_expected integer[], p_types text[],
    p_data json[], p_meta jsonb, p_idempotency_key text
) RETURNS TABLE (out_first_position bigint, out_versions integer[], out_recorded_at timestamptz,
               out_replayed_positions bigint[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = labctl, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n           integer := cardinality(p_streams);
    existing    bigint[];
    bad         bigint;
    conflict_stream  text;
    conflict_version integer;
    versions    integer[];
    hashes      bytea[];
    prev        bytea;
    last_pos    bigint;
    now_ts      timestamptz := clock_timestamp();
    meta        jsonb := coalesce(p_meta, '{}');
    meta_text   text;
    claimed     text;
    data_text   text;
    at_bytes    bytea;
    meta_bytes  bytea;
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN;
    END IF;
    IF cardinality(p_expected) IS DISTINCT FROM n OR cardinality(p_types) IS DISTINCT FROM n
       OR cardinality(p_data) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'labctl_append: % streams but % expected versions, % types and % payloads',
            n, cardinality(p_expected), cardinality(p_types), cardinality(p_data);
    END IF;
    PERFORM pg_advisory_xact_lock(7146011);

    IF p_idempotency_key IS NOT NULL THEN
        SELECT i.positions INTO existing FROM event_idempotency i WHERE i.key = p_idempotency_key;
        IF FOUND THEN
            RETURN QUERY SELECT min(e.position), array_agg(e.version ORDER BY e.position), min(e.recorded_at),
                                array_agg(e.position ORDER BY e.position)
                FROM events e WHERE e.position = ANY (existing);
            RETURN;
        END IF;
    END IF;

    -- Each event's version (the stream's current one + its place among the batch's events of
    -- that stream) and the first event whose expected version disagrees, in one pass. A stream
    -- whose first event here expects a new stream (0) is not looked up: inserting its version 1
    -- fails on UNIQUE (stream, version) if it exists after all (handled below). When no stream
    -- comes twice (a hash aggregate finds out), each event is its stream's next one: no window.
    IF NOT EXISTS (SELECT FROM unnest(p_streams) AS s(stream) GROUP BY s.stream HAVING count(*) > 1) THEN
        SELECT array_agg(coalesce(c.v, 0) + 1 ORDER BY u.ord),
               min(u.ord) FILTER (WHERE u.expected IS NOT NULL AND u.expected <> coalesce(c.v, 0))
          INTO versions, bad
        FROM unnest(p_streams, p_expected) WITH ORDINALITY AS u(stream, expected, ord)
        CROSS JOIN LATERAL (SELECT CASE WHEN u.expected = 0 THEN NULL
                                        ELSE (SELECT max(e.version) FROM events e WHERE e.stream = u.stream) END AS v) c;
    ELSE
        WITH x AS (
            SELECT s.stream, s.expected, s.ord,
                   row_number() OVER w AS nth,
                   first_value(s.expected) OVER w AS anchor
            FROM unnest(p_streams, p_expected) WITH ORDINALITY AS s(stream, expected, ord)
            WINDOW w AS (PARTITION BY s.stream COLLATE "C" ORDER BY s.ord)
        ), cur AS (
            SELECT d.stream, (SELECT max(e.version) FROM events e WHERE e.stream = d.stream) AS v
            FROM (SELECT DISTINCT x.stream FROM x WHERE x.nth = 1 AND x.anchor IS DISTINCT FROM 0) d
        )
        SELECT array_agg((coalesce(cur.v, 0) + x.nth)::integer ORDER BY x.ord),
               min(x.ord) FILTER (WHERE x.expected IS NOT NULL AND x.expected <> coalesce(cur.v, 0) + x.nth - 1)
          INTO versions, bad
        FROM x LEFT JOIN cur ON cur.stream = x.stream;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'stream % was expected at version % but is at version %',
            p_streams[bad], p_expected[bad], versions[bad] - 1
            USING ERRCODE = 'LB001';
    END IF;

    IF labctl_session_is_personal() THEN
        -- A person's own role: the actor is who the database says is connected.
        claimed := meta ->> 'actor';
        IF coalesce(claimed, '') NOT IN ('', session_user) THEN
            RAISE EXCEPTION 'connected as database role %, refusing to record events as %: only members of labctl_service may act for another user',
                session_user, claimed
                USING ERRCODE = 'LB003';
        END IF;
        meta := jsonb_set(meta, '{actor}', to_jsonb(session_user::text));
    END IF;
    meta_text := meta::text;

    SELECT e.position, e.hash INTO last_pos, prev FROM events e ORDER BY e.position DESC LIMIT 1;
    last_pos := coalesce(last_pos, 0);
    -- The chain, event by event; each payload is built inside the loop (arrays of them cost more).
    -- The payload is labctl_event_payload's bytes written out, with the parts every event of the
    -- call shares (its time, its meta) encoded once: a tenth of an append's time at 1,000 events.
    hashes := array_fill('\x'::bytea, ARRAY[n]);
    prev := coalesce(prev, '\x'::bytea);
    at_bytes := int8send((extract(epoch FROM now_ts) * 1000000)::bigint);
    meta_bytes := int4send(octet_length(meta_text)) || convert_to(meta_text, 'UTF8');
    FOR i IN 1..n LOOP
        data_text := p_data[i]::text;
        -- json keeps what jsonb refused: \u0000, which no text column of a read model can hold.
        IF strpos(data_text, '\u0000') > 0 AND data_text ~ '(^|[^\\])(\\\\)*\\u0000' THEN
            RAISE EXCEPTION 'event % of the batch (%): its data holds \u0000, which text cannot hold', i, p_types[i]
                USING ERRCODE = 'untranslatable_character';
        END IF;
        prev := sha256(prev || int8send(last_pos + i) || int4send(versions[i]) || at_bytes
                       || int4send(octet_length(p_streams[i])) || convert_to(p_streams[i], 'UTF8')
                       || int4send(octet_length(p_types[i])) || convert_to(p_types[i], 'UTF8')
                       || int4send(octet_length(data_text)) || convert_to(data_text, 'UTF8')
                       || meta_bytes);
        hashes[i] := prev;
    END LOOP;

    BEGIN
        -- The arrays unnested in the select list, side by side (all are n long): unnest in FROM would
        -- copy every row into a tuplestore first, about 1 us of an append's 15 per event.
        INSERT INTO events (position, stream, version, type, data, meta, recorded_at, hash)
        SELECT last_pos + generate_series(1, n), unnest(p_streams), unnest(versions), unnest(p_types),
               unnest(p_data), meta, now_ts, unnest(hashes);
    EXCEPTION WHEN unique_violation THEN
        -- A stream expected to be new already exists: name it.
        SELECT s.stream, (SELECT max(e.version) FROM events e WHERE e.stream = s.stream)
          INTO conflict_stream, conflict_version
        FROM unnest(p_streams, p_expected) AS s(stream, expected)
        WHERE s.expected = 0 AND EXISTS (SELECT 1 FROM events e WHERE e.stream = s.stream)
        LIMIT 1;
        IF conflict_stream IS NULL THEN
            RAISE;
        END IF;
        RAISE EXCEPTION 'stream % was expected at version % but is at version %',
            conflict_stream, 0, conflict_version
            USING ERRCODE = 'LB001';
    END;

    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO event_idempotency (key, positions, recorded_at)
        VALUES (p_idempotency_key, ARRAY(SELECT generate_series(last_pos + 1, last_pos + n)), now_ts);
    END IF;

    PERFORM pg_notify('labctl_events', (last_pos + n)::text);
    -- One row: positions are contiguous, so the first one says them all.
    RETURN QUERY SELECT last_pos + 1, versions, now_ts, NULL::bigint[];
END
$$;

-- Record a verified prefix of the log (called by `labctl audit verify`).
-- Only a position whose stored hash is the one verified can be recorded.
CREATE FUNCTION labctl_record_verified(p_position bigint, p_hash bytea) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = labctl, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM events e WHERE e.position = p_position AND e.hash = p_hash) THEN
        RAISE EXCEPTION 'no event at position % has the verified hash', p_position USING ERRCODE = 'LB004';
    END IF;
    INSERT INTO audit_checkpoints (position, hash) VALUES (p_position, p_hash);
END
$$;

CREATE FUNCTION labctl_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on %.% refused: %', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'LB002';
END
$$;

CREATE TRIGGER events_are_immutable
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT
    EXECUTE FUNCTION labctl_refuse_change('the event log is append-only');

CREATE TRIGGER audit_checkpoints_are_immutable
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT
    EXECUTE FUNCTION labctl_refuse_change('audit checkpoints are append-only');

-- ------------------------------------------------------ operational tables

-- Reactor checkpoints: advanced in the same transaction as the reactor's effects.
CREATE TABLE reactor_checkpoints (
    name        text        PRIMARY KEY,
    position    bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Content hashes of external inputs and scripts, kept with a digest of their files' sizes,
-- mtimes and inodes: while that digest holds, the hash is reused instead of re-reading the bytes.
CREATE TABLE file_fingerprints (
    path          text        PRIMARY KEY,
    stat_digest   text        NOT NULL,
    content_hash  text        NOT NULL,
    files         bigint      NOT NULL,
    bytes         bigint      NOT NULL,
    hashed_at     timestamptz NOT NULL
);

-- Agents are workers with heartbeats (plain rows, not events).
CREATE TABLE agents (
    id            text        PRIMARY KEY,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    user_name     text        NOT NULL,
    slots         integer     NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz,
    scope         text
);

-- ------------------------------------------------------------ projections

CREATE SCHEMA live;

CREATE TABLE live.projection_checkpoints (
    name        text        PRIMARY KEY,
    position    bigint      NOT NULL
);

CREATE TABLE live.runs (
    id               text        PRIMARY KEY,
    name             text        NOT NULL,
    user_name        text        NOT NULL,
    status           text        NOT NULL,
    executor         text        NOT NULL,
    job_id           text,
    exit_code        integer,
    signal           integer,
    reason           text,
    run_dir          text        NOT NULL,
    cache_key        text,
    producer_run_id  text,
    pipeline_id      text,
    stage_name       text,
    sweep_id         text,
    sweep_index      integer,
    recipe_path      text,
    recipe           jsonb       NOT NULL,
    repo             text,
    repo_commit      text,
    repo_dirty       boolean,
    agent_id         text,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL,
    stream_version   integer     NOT NULL
);
-- The runs page (labctl/web/queries.sql runs_page) filters on and sorts by one of these columns, ties
-- newest first then by id: each index serves its column's filter and its sort, a page at any depth.
CREATE INDEX runs_created_at_idx ON live.runs (created_at, id);
CREATE INDEX runs_status_idx ON live.runs (status, created_at, id);
CREATE INDEX runs_user_created_idx ON live.runs (user_name, created_at, id);
CREATE INDEX runs_name_created_idx ON live.runs (name, created_at, id);
-- duration in seconds (api.SORT_KEYS "duration": the same expression); a run not ended yet is infinite
CREATE INDEX runs_duration_idx ON live.runs
    ((coalesce(date_part('epoch', finished_at - coalesce(started_at, created_at)), 'Infinity'::float8)), created_at, id);
CREATE INDEX runs_cache_key_idx ON live.runs (cache_key);
CREATE INDEX runs_pipeline_idx ON live.runs (pipeline_id);

CREATE TABLE live.run_inputs (
    run_id       text NOT NULL,
    role         text NOT NULL,
    type         text NOT NULL,
    path         text NOT NULL,
    artifact_id  text,
    alias        text,
    hash         text,
    PRIMARY KEY (run_id, role)
);
CREATE INDEX run_inputs_artifact_idx ON live.run_inputs (artifact_id);

CREATE TABLE live.run_outputs (
    run_id       text    NOT NULL,
    artifact_id  text    NOT NULL,
    role         text    NOT NULL,
    path         text    NOT NULL,
    step         integer,
    PRIMARY KEY (run_id, artifact_id)
);
CREATE INDEX run_outputs_artifact_idx ON live.run_outputs (artifact_id);

CREATE TABLE live.artifacts (
    id               text        PRIMARY KEY,
    hash             text        NOT NULL,
    kind             text        NOT NULL,
    path             text        NOT NULL,
    user_name        text        NOT NULL,
    producer_run_id  text,
    size_bytes       bigint,
    metadata         jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    removed_at       timestamptz
);
CREATE INDEX artifacts_kind_idx ON live.artifacts (kind, created_at DESC);
CREATE INDEX artifacts_producer_idx ON live.artifacts (producer_run_id);

CREATE TABLE live.aliases (
    user_name    text        NOT NULL,
    alias        text        NOT NULL,
    artifact_id  text        NOT NULL,
    set_at       timestamptz NOT NULL,
    PRIMARY KEY (user_name, alias)
);
CREATE INDEX aliases_artifact_idx ON live.aliases (artifact_id);

CREATE TABLE live.pipelines (
    id           text        PRIMARY KEY,
    name         text        NOT NULL,
    user_name    text        NOT NULL,
    status       text        NOT NULL,
    file_path    text,
    from_run     text,
    reason       text,
    created_at   timestamptz NOT NULL,
    finished_at  timestamptz
);

CREATE TABLE live.pipeline_stages (
    pipeline_id  text   NOT NULL,
    stage_name   text   NOT NULL,
    ordinal      integer NOT NULL,
    run_ids      text[] NOT NULL,
    parents      text[] NOT NULL,
    PRIMARY KEY (pipeline_id, stage_name)
);

CREATE TABLE live.sweeps (
    id                text        PRIMARY KEY,
    name              text        NOT NULL,
    user_name         text        NOT NULL,
    arg               text        NOT NULL,
    start_index       integer     NOT NULL,
    end_index         integer     NOT NULL,
    throttle          integer,
    run_ids           text[]      NOT NULL,
    aggregate_run_id  text,
    pipeline_id       text,
    status            text        NOT NULL,
    created_at        timestamptz NOT NULL,
    finished_at       timestamptz
);

CREATE TABLE live.evals (
    eval_key                text        PRIMARY KEY,
    policy                  text        NOT NULL,
    checkpoint_artifact_id  text        NOT NULL,
    eval_recipe_hash        text        NOT NULL,
    run_id                  text        NOT NULL,
    step                    integer,
    metrics                 jsonb,
    requested_at            timestamptz NOT NULL,
    recorded_at             timestamptz
);
CREATE INDEX evals_checkpoint_idx ON live.evals (checkpoint_artifact_id);
CREATE INDEX evals_run_idx ON live.evals (run_id);

CREATE TABLE live.metrics (
    run_id     text             NOT NULL,
    name       text             NOT NULL,
    step       bigint           NOT NULL,
    value      double precision,
    logged_at  timestamptz      NOT NULL,
    PRIMARY KEY (run_id, name, step)
);

CREATE TABLE live.metric_files (
    run_id       text        PRIMARY KEY,
    batches      integer     NOT NULL,
    byte_offset  bigint      NOT NULL,
    points       bigint      NOT NULL,
    skipped      bigint      NOT NULL,
    updated_at   timestamptz NOT NULL
);

-- What an import from an original (Rust) labctl registry brought beyond the shared read
-- models: the original's own run fields, users, eval attempt counts and what the artifact
-- store's bytes looked like.
CREATE TABLE live.imported_runs (
    run_id           text        PRIMARY KEY,
    recipe_hash      text        NOT NULL,
    source_path      text        NOT NULL,
    context          jsonb       NOT NULL,
    dependency_on    jsonb,
    tracking         jsonb,
    original_status  text        NOT NULL,
    original_events  integer     NOT NULL,
    last_event_id    bigint
);

CREATE TABLE live.users (
    name        text        PRIMARY KEY,
    pg_role     text,
    created_at  timestamptz NOT NULL
);

CREATE TABLE live.imported_evals (
    eval_key    text        PRIMARY KEY,
    state       text        NOT NULL,
    attempts    integer     NOT NULL,
    user_name   text        NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE live.imported_artifacts (
    artifact_id    text PRIMARY KEY,
    integrity      text NOT NULL,
    observed_hash  text,
    alias_segment  text
);

INSERT INTO event_hash_encodings (encoding, from_position) VALUES (2, 1);
INSERT INTO schema_version (version) VALUES (14);
