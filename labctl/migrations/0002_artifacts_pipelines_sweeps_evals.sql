-- Version 2: the artifact, alias, pipeline, sweep and eval read models.

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

INSERT INTO schema_version (version) VALUES (2);
