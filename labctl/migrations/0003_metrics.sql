-- Version 3: metrics logged by jobs (.lab/metrics.jsonl), by run, name and step,
-- and how far each run's file has been ingested.

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

-- No metrics event predates this version: the new projection is as far as the others.
INSERT INTO live.projection_checkpoints (name, position)
SELECT 'metrics', position FROM live.projection_checkpoints WHERE name = 'runs';

INSERT INTO schema_version (version) VALUES (3);
