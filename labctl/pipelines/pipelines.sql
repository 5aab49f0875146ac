-- Queries of pipelines: planning (plan.py), advancing (advance.py) and showing them (view.py).
-- Optional filters are nullable parameters (``%(x)s::text IS NULL OR col = %(x)s``), never SQL fragments.

-- name: pipeline
SELECT id, status, from_run, user_name AS user FROM pipelines WHERE id = %(id)s

-- name: stages
-- A pipeline's stages in declaration order.
SELECT stage_name AS name, run_ids, parents FROM pipeline_stages WHERE pipeline_id = %(id)s ORDER BY ordinal

-- name: runs
SELECT id, status, stage_name AS stage, sweep_index, stream_version AS version, user_name AS user
FROM runs WHERE pipeline_id = %(id)s

-- name: outputs_of_roles
-- The outputs of runs for a role, for several (run, role) pairs at once (a checkpoint stream has one per
-- step): each pair's, oldest step first.
SELECT o.run_id, o.role, o.artifact_id, o.path, a.hash, o.step
FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id
WHERE (o.run_id, o.role) IN (SELECT * FROM unnest(%(run_ids)s::text[], %(roles)s::text[]))
ORDER BY o.run_id, o.role, o.step NULLS FIRST

-- name: output_aliases
-- The alias a run's recipe (as submitted, rendered) gives its output ``role``, for several (run, role) pairs.
SELECT p.run_id, p.role, r.recipe -> 'outputs' -> p.role ->> 'alias'
FROM unnest(%(run_ids)s::text[], %(roles)s::text[]) AS p(run_id, role) JOIN runs r ON r.id = p.run_id

-- name: sweep_of_stage
-- The sweep a stage's runs belong to (a sweep stage), found by one of its runs.
SELECT id, status FROM sweeps WHERE pipeline_id = %(pipeline_id)s AND %(run_id)s = ANY(run_ids)

-- name: running_pipelines
-- Running pipelines (only ``user``'s unless NULL), oldest first.
SELECT id FROM pipelines
WHERE status = 'running' AND (%(user)s::text IS NULL OR user_name = %(user)s)
ORDER BY created_at

-- name: run_status
SELECT id, status FROM runs WHERE id = %(id)s

-- name: output_roles
SELECT DISTINCT role FROM run_outputs WHERE run_id = %(run_id)s

-- name: unfinished_runs
SELECT id FROM runs WHERE pipeline_id = %(id)s AND status <> ALL (%(terminal)s::text[]) ORDER BY created_at

-- name: pipeline_info
SELECT name, user_name, status, reason, created_at, finished_at, file_path, from_run FROM pipelines WHERE id = %(id)s

-- name: runs_shown
-- What `pipeline-show` prints of each run, with the pipeline's creation time (epoch seconds) as the original does.
SELECT r.id, r.executor, r.job_id, r.status, r.run_dir, extract(epoch FROM p.created_at)::bigint
FROM runs r JOIN pipelines p ON p.id = r.pipeline_id
WHERE r.pipeline_id = %(id)s

-- name: runs_submitted
SELECT id, executor, job_id, status FROM runs WHERE pipeline_id = %(id)s

-- name: stage_parents
SELECT stage_name, parents FROM pipeline_stages WHERE pipeline_id = %(id)s

-- name: pipelines_list
-- The latest pipelines (only ``user``'s unless NULL), newest first.
SELECT id, name, status, user_name AS user, created_at, finished_at FROM pipelines
WHERE %(user)s::text IS NULL OR user_name = %(user)s
ORDER BY created_at DESC
LIMIT %(limit)s

-- name: sweep
SELECT id, name, arg, start_index, end_index, throttle, status, aggregate_run_id FROM sweeps WHERE id = %(id)s

-- name: sweep_points
SELECT sweep_index, id, status, exit_code, recipe FROM runs WHERE sweep_id = %(id)s ORDER BY sweep_index

-- name: pipelines_of_runs
SELECT DISTINCT pipeline_id FROM runs WHERE id = ANY (%(ids)s) AND pipeline_id IS NOT NULL

-- name: pipelines_many
SELECT id, status, from_run, user_name AS user FROM pipelines WHERE id = ANY (%(ids)s)

-- name: stages_many
-- The stages of several pipelines, each pipeline's in declaration order.
SELECT pipeline_id, stage_name AS name, run_ids, parents FROM pipeline_stages
WHERE pipeline_id = ANY (%(ids)s) ORDER BY pipeline_id, ordinal

-- name: runs_many
SELECT pipeline_id, id, status, stage_name AS stage, sweep_index, stream_version AS version, user_name AS user
FROM runs WHERE pipeline_id = ANY (%(ids)s)

-- name: sweeps_of_pipelines
-- The sweeps of several pipelines (a sweep stage's runs are one sweep's).
SELECT pipeline_id, id, status, run_ids FROM sweeps WHERE pipeline_id = ANY (%(ids)s)
