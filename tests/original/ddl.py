"""DDL reproducing the original (Rust) labctl registry's schema, one text per version.

Written from the original's migrations (public repo p-doom/labctl), not copied:
``V_EB54594`` is ``0001_initial_schema.sql`` as merged with the Postgres PR
(content-addressed ``_objects`` store, per-user aliases, coalesce slots);
``V_0001`` is the squashed ``0001`` of the newest commit (users, path-canonical
artifact ids, strict checks), ``V_0002`` and ``V_0003`` its two later steps.
"""

from __future__ import annotations

V_EB54594 = """
CREATE TABLE runs (
    id text PRIMARY KEY, recipe_name text NOT NULL, recipe_hash text NOT NULL, status text NOT NULL,
    job_id text, run_dir text NOT NULL, repo text NOT NULL, source_path text NOT NULL,
    recipe_json jsonb NOT NULL, context_json jsonb NOT NULL, created_at bigint NOT NULL,
    finished_at bigint, pipeline_id text, dependency_on jsonb, stage_name text,
    submitted_by text NOT NULL, cache_key text, coalesced_peer_run_id text
);
CREATE TABLE pipelines (
    id text PRIMARY KEY, name text NOT NULL, pipeline_path text, "user" text NOT NULL, created_at bigint NOT NULL
);
CREATE TABLE artifacts (
    id text PRIMARY KEY, kind text NOT NULL, path text NOT NULL, content_hash text NOT NULL,
    producer_run_id text, metadata_json jsonb NOT NULL, created_at bigint NOT NULL,
    "user" text NOT NULL, alias_segment text NOT NULL
);
CREATE TABLE artifact_aliases (alias text PRIMARY KEY, artifact_id text NOT NULL, created_at bigint NOT NULL);
CREATE TABLE artifact_user_aliases (
    "user" text NOT NULL, alias text NOT NULL, kind text NOT NULL, artifact_id text NOT NULL,
    created_at bigint NOT NULL, PRIMARY KEY ("user", alias, kind)
);
CREATE TABLE run_inputs (
    run_id text NOT NULL, role text NOT NULL, artifact_id text, resolved_path text NOT NULL,
    PRIMARY KEY (run_id, role)
);
CREATE TABLE run_outputs (
    run_id text NOT NULL, role text NOT NULL, artifact_id text NOT NULL, PRIMARY KEY (run_id, role, artifact_id)
);
CREATE TABLE eval_requests (
    eval_key text PRIMARY KEY, checkpoint_artifact_id text NOT NULL, eval_recipe_hash text NOT NULL,
    policy_id text NOT NULL, eval_run_id text, state text NOT NULL, attempts bigint NOT NULL DEFAULT 0,
    "user" text NOT NULL, created_at bigint NOT NULL, updated_at bigint NOT NULL
);
CREATE TABLE coalesce_claims (cache_key text PRIMARY KEY, producer_run_id text NOT NULL, claimed_at bigint NOT NULL);
CREATE TABLE tracking (
    run_id text PRIMARY KEY, entity text NOT NULL, project text NOT NULL, url text NOT NULL,
    group_name text, source text NOT NULL, created_at bigint NOT NULL
);
CREATE TABLE events (
    id bigserial PRIMARY KEY, run_id text, event_type text NOT NULL, payload_json jsonb NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX idx_runs_status ON runs (status);
CREATE INDEX idx_runs_pipeline ON runs (pipeline_id);
CREATE INDEX idx_runs_recipe ON runs (recipe_name);
CREATE INDEX idx_runs_user ON runs (submitted_by);
CREATE INDEX idx_runs_cache_key ON runs (cache_key);
CREATE INDEX idx_artifacts_kind ON artifacts (kind);
CREATE INDEX idx_artifacts_producer ON artifacts (producer_run_id);
CREATE INDEX idx_artifacts_path ON artifacts (path);
CREATE INDEX idx_artifacts_hash ON artifacts (kind, content_hash);
CREATE INDEX idx_eval_requests_checkpoint ON eval_requests (checkpoint_artifact_id);
CREATE INDEX idx_run_inputs_path ON run_inputs (resolved_path);
CREATE INDEX idx_run_inputs_artifact ON run_inputs (artifact_id);
CREATE INDEX idx_run_outputs_run ON run_outputs (run_id);
CREATE INDEX idx_aliases_artifact ON artifact_aliases (artifact_id);
CREATE INDEX idx_user_aliases_artifact ON artifact_user_aliases (artifact_id);
CREATE INDEX idx_user_aliases_kind ON artifact_user_aliases (kind, "user");
CREATE INDEX idx_events_run ON events (run_id);
CREATE INDEX idx_events_type ON events (event_type);
CREATE INDEX idx_events_created ON events (created_at);
"""

_STATUSES = (
    "'created','submitted','running','succeeded','failed','cancelled','timeout','oom','unknown_terminal','cache_hit'"
)

V_0001 = f"""
CREATE TABLE users (name text PRIMARY KEY, created_at bigint NOT NULL, pg_role text NOT NULL);
CREATE TABLE pipelines (
    id text PRIMARY KEY, name text NOT NULL, pipeline_path text,
    "user" text NOT NULL REFERENCES users (name), created_at bigint NOT NULL,
    CONSTRAINT pipelines_id_format CHECK (id LIKE 'pipeline_%')
);
CREATE TABLE runs (
    id text PRIMARY KEY, recipe_name text NOT NULL, recipe_hash text NOT NULL, status text NOT NULL,
    job_id text, run_dir text NOT NULL, repo text NOT NULL, source_path text NOT NULL,
    recipe_json jsonb NOT NULL, context_json jsonb NOT NULL, created_at bigint NOT NULL,
    finished_at bigint, pipeline_id text, dependency_on jsonb, stage_name text,
    submitted_by text NOT NULL REFERENCES users (name), cache_key text,
    CONSTRAINT runs_id_format CHECK (id LIKE 'run_%'),
    CONSTRAINT runs_recipe_name_nonempty CHECK (length(recipe_name) > 0),
    CONSTRAINT runs_repo_nonempty CHECK (length(repo) > 0),
    CONSTRAINT runs_recipe_hash_format
        CHECK (recipe_hash ~ '^[0-9a-f]{{64}}$' OR recipe_hash ~ '^synth_[0-9a-f]{{56}}$'),
    CONSTRAINT runs_dependency_on_shape CHECK (dependency_on IS NULL OR
        (jsonb_typeof(dependency_on) = 'object' AND jsonb_typeof(dependency_on->'afterok') = 'array')),
    CONSTRAINT runs_created_at_positive CHECK (created_at > 0),
    CONSTRAINT runs_finished_at_sane CHECK (finished_at IS NULL OR finished_at >= created_at),
    CONSTRAINT runs_terminal_finished_at CHECK ((status IN ('created','submitted','running')) = (finished_at IS NULL)),
    CONSTRAINT runs_status_check CHECK (status IN ({_STATUSES})),
    CONSTRAINT runs_pipeline_fk FOREIGN KEY (pipeline_id) REFERENCES pipelines (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE UNIQUE INDEX runs_job_id_unique ON runs (job_id) WHERE job_id IS NOT NULL;
CREATE TABLE artifacts (
    id text PRIMARY KEY, kind text NOT NULL, path text NOT NULL, producer_run_id text,
    metadata_json jsonb NOT NULL, created_at bigint NOT NULL, "user" text NOT NULL REFERENCES users (name),
    CONSTRAINT artifacts_id_format CHECK (id LIKE 'artifact_%'),
    CONSTRAINT artifacts_kind_nonempty CHECK (length(kind) > 0),
    CONSTRAINT artifacts_path_nonempty CHECK (length(path) > 0),
    CONSTRAINT artifacts_path_unique UNIQUE (path),
    CONSTRAINT artifacts_producer_fk FOREIGN KEY (producer_run_id) REFERENCES runs (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE artifact_aliases (
    alias text PRIMARY KEY, artifact_id text NOT NULL REFERENCES artifacts (id), created_at bigint NOT NULL
);
CREATE TABLE run_inputs (
    run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE, role text NOT NULL,
    artifact_id text REFERENCES artifacts (id), resolved_path text NOT NULL,
    PRIMARY KEY (run_id, role), CONSTRAINT run_inputs_role_nonempty CHECK (length(role) > 0)
);
CREATE TABLE run_outputs (
    run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE, role text NOT NULL,
    artifact_id text NOT NULL REFERENCES artifacts (id),
    PRIMARY KEY (run_id, role, artifact_id), CONSTRAINT run_outputs_role_nonempty CHECK (length(role) > 0)
);
CREATE TABLE eval_requests (
    eval_key text PRIMARY KEY, checkpoint_artifact_id text NOT NULL REFERENCES artifacts (id),
    eval_recipe_hash text NOT NULL, policy_id text NOT NULL, eval_run_id text, state text NOT NULL,
    attempts bigint NOT NULL DEFAULT 0, "user" text NOT NULL REFERENCES users (name),
    created_at bigint NOT NULL, updated_at bigint NOT NULL,
    CONSTRAINT eval_requests_state_check CHECK (state = 'submitted'),
    CONSTRAINT eval_requests_attempts_positive CHECK (attempts >= 0),
    CONSTRAINT eval_requests_recipe_hash_format CHECK (eval_recipe_hash ~ '^[0-9a-f]{{64}}$'),
    CONSTRAINT eval_requests_run_fk FOREIGN KEY (eval_run_id) REFERENCES runs (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE UNIQUE INDEX eval_requests_eval_run_id_unique ON eval_requests (eval_run_id) WHERE eval_run_id IS NOT NULL;
CREATE TABLE tracking (
    run_id text PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE, entity text NOT NULL,
    project text NOT NULL, url text NOT NULL, group_name text, source text NOT NULL, created_at bigint NOT NULL
);
CREATE TABLE events (
    id bigserial PRIMARY KEY, run_id text REFERENCES runs (id) ON DELETE CASCADE,
    event_type text NOT NULL, payload_json jsonb NOT NULL, created_at bigint NOT NULL,
    CONSTRAINT events_event_type_nonempty CHECK (length(event_type) > 0),
    CONSTRAINT events_payload_object CHECK (jsonb_typeof(payload_json) = 'object')
);
CREATE FUNCTION notify_labctl_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('labctl_events', NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION notify_labctl_event();
CREATE INDEX idx_runs_status ON runs (status);
CREATE INDEX idx_runs_pipeline ON runs (pipeline_id);
CREATE INDEX idx_runs_recipe ON runs (recipe_name);
CREATE INDEX idx_runs_user ON runs (submitted_by);
CREATE INDEX idx_runs_cache_key ON runs (cache_key);
CREATE INDEX idx_artifacts_kind ON artifacts (kind);
CREATE INDEX idx_artifacts_producer ON artifacts (producer_run_id);
CREATE INDEX idx_eval_requests_checkpoint ON eval_requests (checkpoint_artifact_id);
CREATE INDEX idx_run_inputs_path ON run_inputs (resolved_path);
CREATE INDEX idx_run_inputs_artifact ON run_inputs (artifact_id);
CREATE INDEX idx_run_outputs_run ON run_outputs (run_id);
CREATE INDEX idx_aliases_artifact ON artifact_aliases (artifact_id);
CREATE INDEX idx_events_run ON events (run_id);
CREATE INDEX idx_events_type ON events (event_type);
CREATE INDEX idx_events_created ON events (created_at);
"""

# Only the cache-hit lookup needs the key index: partial over successful runs.
V_0002 = """
DROP INDEX IF EXISTS idx_runs_cache_key;
CREATE INDEX idx_runs_cache_key ON runs (cache_key, created_at DESC)
    WHERE cache_key IS NOT NULL AND status IN ('succeeded', 'cache_hit');
"""

# At most one in-flight run per cache key.
V_0003 = """
CREATE UNIQUE INDEX runs_cache_key_inflight_unique ON runs (cache_key)
    WHERE cache_key IS NOT NULL AND status IN ('created', 'submitted', 'running');
"""

# Every version a test can build: name -> the DDL that produces it.
VERSIONS = {
    "eb54594": V_EB54594,
    "0001": V_0001,
    "0002": V_0001 + V_0002,
    "0003": V_0001 + V_0002 + V_0003,
}
