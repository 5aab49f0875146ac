-- Version 5: read models of what `labctl import` brings from an original labctl registry.

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

-- No import event predates this version: the new projection is as far as the others.
INSERT INTO live.projection_checkpoints (name, position)
SELECT 'imports', position FROM live.projection_checkpoints WHERE name = 'runs';

INSERT INTO schema_version (version) VALUES (5);
