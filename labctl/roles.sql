-- Who may do what: applied by `labctl db upgrade` after schema.sql or the
-- upgrade steps (idempotent; also run on every upgrade so tables added later
-- get their grants). Roles are shared by every database of the server.
--
-- labctl_owner    owns the event log and the functions that append to it;
--                 nobody logs in as it.
-- labctl_app      what labctl needs day to day: read the log, append through
--                 labctl_append, own the read models (replay swaps schemas),
--                 read and write the operational tables.
-- labctl_user     a person's own role (`labctl admin add-user`): their events
--                 carry their role's name as the actor.
-- labctl_service  a group service account that may act for others (LABCTL_USER).

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['labctl_owner', 'labctl_app'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a concurrent upgrade of another database
            END;
        END IF;
    END LOOP;
    FOREACH r IN ARRAY ARRAY['labctl_user', 'labctl_service'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN IN ROLE labctl_app', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    EXECUTE format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO labctl_app', current_database());
END
$$;

-- The log: owned by labctl_owner, read by everyone, appended to only through labctl_append.
ALTER TABLE labctl.events OWNER TO labctl_owner;
ALTER TABLE labctl.event_idempotency OWNER TO labctl_owner;
ALTER TABLE labctl.event_hash_encodings OWNER TO labctl_owner;
ALTER TABLE labctl.audit_checkpoints OWNER TO labctl_owner;
ALTER TABLE labctl.schema_version OWNER TO labctl_owner;
ALTER FUNCTION labctl.labctl_append(text[], integer[], text[], json[], jsonb, text) OWNER TO labctl_owner;
ALTER FUNCTION labctl.labctl_record_verified(bigint, bytea) OWNER TO labctl_owner;
ALTER FUNCTION labctl.labctl_event_payload(bigint, text, integer, text, text, text, timestamptz) OWNER TO labctl_owner;
ALTER FUNCTION labctl.labctl_session_is_personal() OWNER TO labctl_owner;
ALTER FUNCTION labctl.labctl_refuse_change() OWNER TO labctl_owner;
REVOKE ALL ON labctl.events, labctl.event_idempotency, labctl.event_hash_encodings, labctl.audit_checkpoints,
    labctl.schema_version FROM PUBLIC;
GRANT SELECT ON labctl.events, labctl.event_idempotency, labctl.event_hash_encodings, labctl.audit_checkpoints,
    labctl.schema_version TO labctl_app;
REVOKE ALL ON FUNCTION labctl.labctl_append(text[], integer[], text[], json[], jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION labctl.labctl_record_verified(bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION labctl.labctl_append(text[], integer[], text[], json[], jsonb, text) TO labctl_app;
GRANT EXECUTE ON FUNCTION labctl.labctl_record_verified(bigint, bytea) TO labctl_app;
ALTER SCHEMA labctl OWNER TO labctl_owner;
REVOKE ALL ON SCHEMA labctl FROM PUBLIC;
GRANT USAGE ON SCHEMA labctl TO labctl_app;

-- Operational tables (every other table of labctl's schema): read and written by labctl_app.
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'labctl' AND c.relkind IN ('r', 'p')
          AND c.relname NOT IN ('events', 'event_idempotency', 'event_hash_encodings', 'audit_checkpoints',
                                'schema_version')
        ORDER BY c.relname
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON labctl.%I TO labctl_app', t);
    END LOOP;
    FOR t IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'labctl' AND c.relkind = 'S'
        ORDER BY c.relname
    LOOP
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE labctl.%I TO labctl_app', t);
    END LOOP;
END
$$;

-- The read models belong to labctl_app: any member may rebuild them (replay swaps the schema).
DO $$
DECLARE
    t text;
BEGIN
    EXECUTE 'ALTER SCHEMA live OWNER TO labctl_app';
    FOR t IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'live' AND c.relkind IN ('r', 'p')
        ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE live.%I OWNER TO labctl_app', t);
    END LOOP;
END
$$;
