-- Queries of reading runs: `labctl status`, `show`, `log`.
-- Optional filters are nullable parameters (``%(x)s::text IS NULL OR col = %(x)s``), never SQL fragments.

-- name: status_default
-- `labctl status`: the unfinished runs plus the latest 20 (of ``user`` and in ``state``, each unless NULL).
(SELECT id, name, status, exit_code, user_name AS user, created_at, started_at, finished_at, cache_key,
        pipeline_id, stage_name, sweep_id, job_id, executor, reason
 FROM runs
 WHERE (%(user)s::text IS NULL OR user_name = %(user)s) AND (%(state)s::text IS NULL OR status = %(state)s)
   AND status = ANY (%(unfinished)s::text[]))  -- the few unfinished runs, by runs_status_idx, not every run of the user
UNION
(SELECT id, name, status, exit_code, user_name AS user, created_at, started_at, finished_at, cache_key,
        pipeline_id, stage_name, sweep_id, job_id, executor, reason
 FROM runs
 WHERE (%(user)s::text IS NULL OR user_name = %(user)s) AND (%(state)s::text IS NULL OR status = %(state)s)
 ORDER BY created_at DESC LIMIT 20)
ORDER BY created_at, id

-- name: status_all
-- `labctl status --all`: every run (of ``user`` and in ``state``, each unless NULL), oldest first.
SELECT id, name, status, exit_code, user_name AS user, created_at, started_at, finished_at, cache_key,
       pipeline_id, stage_name, sweep_id, job_id, executor, reason
FROM runs
WHERE (%(user)s::text IS NULL OR user_name = %(user)s) AND (%(state)s::text IS NULL OR status = %(state)s)
ORDER BY created_at, id

-- name: run_row
SELECT * FROM runs WHERE id = %(id)s

-- name: run_status
SELECT status, finished_at FROM runs WHERE id = %(id)s

-- name: run_inputs
SELECT role, type, path, artifact_id, alias FROM run_inputs WHERE run_id = %(id)s ORDER BY role

-- name: imported_run
-- What an import from the original labctl's registry kept of the run as it was there.
SELECT recipe_hash, source_path, context, dependency_on, tracking, original_events
FROM imported_runs WHERE run_id = %(id)s

-- What `labctl show` prints beside the run row, with the original's keys.

-- name: output_aliases
SELECT DISTINCT al.alias, al.artifact_id
FROM aliases al JOIN run_outputs o ON o.artifact_id = al.artifact_id
WHERE o.run_id = %(id)s ORDER BY 1, 2;

-- name: eval_requests
-- Evals of the run's checkpoints, and the eval the run itself is: two index lookups (an OR across
-- the join would scan every eval).
SELECT e.eval_key, e.checkpoint_artifact_id, e.eval_recipe_hash, e.policy, e.run_id, er.status
FROM (
    SELECT e.eval_key, e.checkpoint_artifact_id, e.eval_recipe_hash, e.policy, e.run_id, e.requested_at
    FROM evals e JOIN artifacts a ON a.id = e.checkpoint_artifact_id WHERE a.producer_run_id = %(id)s
    UNION
    SELECT eval_key, checkpoint_artifact_id, eval_recipe_hash, policy, run_id, requested_at
    FROM evals WHERE run_id = %(id)s
) e
LEFT JOIN runs er ON er.id = e.run_id
ORDER BY e.requested_at;

-- name: run_outputs
SELECT o.role, o.artifact_id, o.path, o.step, a.kind, a.producer_run_id, a.metadata,
       extract(epoch FROM a.created_at)::bigint
FROM run_outputs o LEFT JOIN artifacts a ON a.id = o.artifact_id
WHERE o.run_id = %(id)s ORDER BY o.role, o.step NULLS FIRST;

-- name: parent_stages
SELECT s.stage_name, s.run_ids
FROM pipeline_stages s
JOIN pipeline_stages me ON me.pipeline_id = s.pipeline_id AND s.stage_name = ANY(me.parents)
WHERE me.pipeline_id = %(pipeline)s AND %(id)s = ANY(me.run_ids)
ORDER BY s.ordinal;

-- name: job_gpus
-- The GPU ids a local job was given, as its latest JobSubmitted recorded them.
SELECT data->'gpus' FROM events WHERE stream = %(stream)s AND type = 'JobSubmitted' ORDER BY version DESC LIMIT 1

-- name: run_changes
-- What `--wait` reports of each run: its state, exit code, reason, and whose outputs it reused.
SELECT id, status, exit_code, reason, producer_run_id FROM runs WHERE id = ANY (%(ids)s) ORDER BY created_at

-- name: pipeline_state
SELECT status, reason FROM pipelines WHERE id = %(id)s

-- name: run_jobs
-- Where each run's job runs (executor, job id) and its state.
SELECT id, executor, job_id, status FROM runs WHERE id = ANY (%(ids)s)

-- name: run_stages
SELECT id, stage_name, sweep_index FROM runs WHERE id = ANY (%(ids)s)

-- name: runs_compared
SELECT id, name, status, recipe, started_at, finished_at, producer_run_id, sweep_index FROM runs
WHERE id = ANY (%(ids)s)

-- name: inputs_compared
SELECT run_id, role, type, path, artifact_id, alias, hash FROM run_inputs WHERE run_id = ANY (%(ids)s)

-- name: run_to_cancel
SELECT status, user_name, stream_version, agent_id, job_id, executor, cache_key FROM runs WHERE id = %(id)s

-- name: run_recipes
SELECT id, recipe FROM runs WHERE id = ANY (%(ids)s)

-- name: ended_run_dirs
-- The run dirs of ``user``'s runs that ended at least ``min_age`` ago, oldest first.
SELECT run_dir FROM runs
WHERE user_name = %(user)s AND status = ANY (%(terminal)s::text[])
  AND coalesce(finished_at, updated_at) <= now() - %(min_age)s::interval
ORDER BY finished_at NULLS FIRST

-- name: run_version
SELECT status, stream_version FROM runs WHERE id = %(id)s

-- name: runs_to_finish
-- The state, stream version and cache key of runs whose ends are about to be recorded.
SELECT id, status, stream_version, cache_key FROM runs WHERE id = ANY (%(ids)s)
