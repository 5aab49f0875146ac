-- The web server's reads. Filters are nullable parameters (NULL = no filter);
-- connections never prepare statements, so each query is planned with its values.

-- name: runs_page
-- One page of runs by {sort} (ties newest first, then by id: {keys}), after a keyset cursor.
-- {sort}, {keys}, {cmp} and {order} come from a fixed list (api.SORT_KEYS), never from the
-- request; schema.sql indexes each ({keys}), so a page reads about its own rows at any depth.
SELECT {sort} AS sort_key, r.id, r.name, r.user_name, r.status, r.exit_code, r.executor, r.job_id, r.run_dir, r.repo,
       r.cache_key, r.pipeline_id, r.stage_name, r.sweep_id, r.sweep_index, r.reason,
       r.created_at, r.started_at, r.finished_at,
       r.recipe -> 'params' AS params,
       (SELECT e.metrics
        FROM artifacts a JOIN evals e ON e.checkpoint_artifact_id = a.id
        WHERE a.producer_run_id = r.id AND e.metrics IS NOT NULL
        ORDER BY e.step DESC NULLS LAST, e.recorded_at DESC LIMIT 1) AS metrics
FROM runs r
WHERE (%(user)s::text IS NULL OR r.user_name = %(user)s)
  AND (%(state)s::text IS NULL OR r.status = %(state)s)
  AND (%(recipe)s::text IS NULL OR r.name = %(recipe)s)
  AND (%(pipeline)s::text IS NULL OR r.pipeline_id = %(pipeline)s)
  AND (%(text)s::text IS NULL OR r.id ILIKE %(text)s OR r.name ILIKE %(text)s OR r.stage_name ILIKE %(text)s
       OR r.reason ILIKE %(text)s)
  AND (NOT %(paged)s OR ({keys}) {cmp} ({after}))
ORDER BY {order}
LIMIT %(limit)s;

-- name: run_row
SELECT * FROM runs WHERE id = %(id)s;

-- name: runs_by_ids
SELECT id, name, user_name, status, exit_code, executor, job_id, run_dir, repo, cache_key, pipeline_id,
       stage_name, sweep_id, sweep_index, reason, created_at, started_at, finished_at,
       recipe -> 'params' AS params, recipe -> 'args' AS args
FROM runs WHERE id = ANY (%(ids)s);

-- name: runs_of_recipe
SELECT id FROM runs WHERE name = %(name)s ORDER BY created_at DESC, id DESC LIMIT %(limit)s;

-- name: recipe_history
SELECT status, created_at, id FROM runs WHERE name = %(name)s ORDER BY created_at DESC, id DESC LIMIT %(limit)s;

-- name: run_inputs
SELECT i.role, i.type, i.path, i.artifact_id, i.alias, coalesce(i.hash, a.hash) AS hash
FROM run_inputs i LEFT JOIN artifacts a ON a.id = i.artifact_id
WHERE i.run_id = %(id)s ORDER BY i.role;

-- name: run_outputs
SELECT o.role, o.step, o.artifact_id, a.kind, coalesce(a.path, o.path) AS path, a.hash, a.size_bytes,
       a.producer_run_id, a.created_at,
       coalesce((SELECT array_agg(al.user_name || '/' || al.alias ORDER BY al.alias)
                 FROM aliases al WHERE al.artifact_id = o.artifact_id), '{}') AS aliases,
       CASE WHEN a.kind = 'eval_result' THEN a.metadata -> 'result' END AS result
FROM run_outputs o LEFT JOIN artifacts a ON a.id = o.artifact_id
WHERE o.run_id = %(id)s ORDER BY o.role, o.step NULLS FIRST;

-- name: eval_points
-- Every eval of the checkpoints produced by these runs (the points of their metric curves).
SELECT a.producer_run_id, e.policy, e.step, e.metrics, e.run_id AS eval_run_id, r.status AS state,
       e.checkpoint_artifact_id, e.eval_key, e.requested_at, e.recorded_at
FROM artifacts a
JOIN evals e ON e.checkpoint_artifact_id = a.id
LEFT JOIN runs r ON r.id = e.run_id
WHERE a.producer_run_id = ANY (%(ids)s)
  AND (%(policy)s::text IS NULL OR e.policy = %(policy)s)
ORDER BY a.producer_run_id, e.policy, e.step NULLS LAST;

-- name: evals_list
SELECT e.eval_key, e.policy, e.checkpoint_artifact_id, a.producer_run_id, e.step, e.run_id AS eval_run_id,
       r.status AS state, e.metrics, e.requested_at, e.recorded_at
FROM evals e
LEFT JOIN artifacts a ON a.id = e.checkpoint_artifact_id
LEFT JOIN runs r ON r.id = e.run_id
WHERE (%(policy)s::text IS NULL OR e.policy = %(policy)s)
ORDER BY e.requested_at DESC, e.eval_key
LIMIT %(limit)s;

-- name: policy_summaries
-- Evals per policy and eval-run state (the caller adds them up by kind of state).
SELECT e.policy, r.status, count(*), max(e.requested_at)
FROM evals e LEFT JOIN runs r ON r.id = e.run_id
GROUP BY e.policy, r.status;

-- name: policy_producers
-- The training runs whose checkpoints a policy evaluated, newest first.
SELECT a.producer_run_id
FROM evals e JOIN artifacts a ON a.id = e.checkpoint_artifact_id
JOIN runs r ON r.id = a.producer_run_id
WHERE e.policy = %(policy)s
GROUP BY a.producer_run_id, r.created_at
ORDER BY r.created_at DESC, a.producer_run_id DESC
LIMIT %(limit)s;

-- name: pipelines_list
SELECT pl.id, pl.name, pl.user_name, pl.status, pl.reason, pl.file_path, pl.created_at, pl.finished_at,
       (SELECT count(*) FROM pipeline_stages st WHERE st.pipeline_id = pl.id) AS stage_count
FROM pipelines pl
WHERE (%(user)s::text IS NULL OR pl.user_name = %(user)s)
ORDER BY pl.created_at DESC, pl.id DESC
LIMIT %(limit)s;

-- name: pipeline_row
SELECT id, name, user_name, status, reason, file_path, from_run, created_at, finished_at
FROM pipelines WHERE id = %(id)s;

-- name: pipeline_stages
-- A pipeline's stages in order, each with its runs' states; a stage's status is its runs'
-- common status, "running" while any runs, else "mixed" ("created" before it has runs).
SELECT st.stage_name, st.parents, st.run_ids,
       CASE
           WHEN count(r.id) = 0 THEN 'created'
           WHEN count(DISTINCT r.status) = 1 THEN min(r.status)
           WHEN bool_or(r.status = 'running') THEN 'running'
           ELSE 'mixed'
       END AS status,
       coalesce(json_agg(json_build_object('id', r.id, 'status', r.status, 'exit_code', r.exit_code)
                         ORDER BY r.sweep_index NULLS FIRST, r.id) FILTER (WHERE r.id IS NOT NULL), '[]') AS runs
FROM pipeline_stages st
LEFT JOIN runs r ON r.id = ANY (st.run_ids)
WHERE st.pipeline_id = %(id)s
GROUP BY st.pipeline_id, st.stage_name, st.ordinal, st.parents, st.run_ids
ORDER BY st.ordinal;

-- name: pipeline_runs
SELECT id, name, user_name, status, exit_code, executor, job_id, run_dir, repo, cache_key, pipeline_id,
       stage_name, sweep_id, sweep_index, reason, created_at, started_at, finished_at,
       recipe -> 'params' AS params
FROM runs WHERE pipeline_id = %(id)s ORDER BY created_at, sweep_index NULLS FIRST, id;

-- name: sweep_row
SELECT id, name, user_name, arg, start_index, end_index, throttle, run_ids, aggregate_run_id, pipeline_id,
       status, created_at, finished_at
FROM sweeps WHERE id = %(id)s;

-- name: sweeps_of_pipeline
SELECT id FROM sweeps WHERE pipeline_id = %(id)s ORDER BY created_at, id;

-- name: artifacts_list
SELECT a.id, a.kind, a.path, a.hash, a.size_bytes, a.user_name, a.producer_run_id, a.created_at, a.removed_at,
       coalesce((SELECT array_agg(al.user_name || '/' || al.alias ORDER BY al.alias)
                 FROM aliases al WHERE al.artifact_id = a.id), '{}') AS aliases
FROM artifacts a
WHERE (%(kind)s::text IS NULL OR a.kind = %(kind)s)
  AND (%(user)s::text IS NULL OR a.user_name = %(user)s)
  AND (%(after_id)s::text IS NULL OR (a.created_at, a.id) < (%(after_key)s::timestamptz, %(after_id)s))
ORDER BY a.created_at DESC, a.id DESC
LIMIT %(limit)s;

-- name: artifact_row
SELECT a.id, a.kind, a.path, a.hash, a.size_bytes, a.user_name, a.producer_run_id, a.created_at, a.removed_at,
       a.metadata,
       coalesce((SELECT array_agg(al.user_name || '/' || al.alias ORDER BY al.alias)
                 FROM aliases al WHERE al.artifact_id = a.id), '{}') AS aliases
FROM artifacts a WHERE a.id = %(id)s;

-- name: artifact_consumers
SELECT run_id, role FROM run_inputs WHERE artifact_id = %(id)s ORDER BY run_id, role;

-- name: artifact_by_alias
SELECT artifact_id FROM aliases WHERE user_name || '/' || alias = %(ref)s OR alias = %(ref)s
ORDER BY (user_name || '/' || alias = %(ref)s) DESC, set_at DESC LIMIT 1;

-- name: inputs_of_runs
SELECT run_id, artifact_id, role FROM run_inputs WHERE run_id = ANY (%(ids)s) AND artifact_id IS NOT NULL;

-- name: consumers_of_artifacts
SELECT artifact_id, run_id, role FROM run_inputs WHERE artifact_id = ANY (%(ids)s);

-- name: outputs_of_runs
SELECT run_id, artifact_id FROM run_outputs WHERE run_id = ANY (%(ids)s);

-- name: artifacts_by_ids
SELECT a.id, a.kind, a.path, a.hash, a.producer_run_id, a.created_at,
       coalesce((SELECT array_agg(al.user_name || '/' || al.alias ORDER BY al.alias)
                 FROM aliases al WHERE al.artifact_id = a.id), '{}') AS aliases
FROM artifacts a WHERE a.id = ANY (%(ids)s);

-- name: position_before_tail
-- The position just before the newest %(count)s matching events (below %(before)s), to read them with read_all.
SELECT coalesce(min(position) - 1, 0)
FROM (
    SELECT position FROM events
    WHERE (%(before)s::bigint IS NULL OR position < %(before)s)
      AND (%(stream)s::text IS NULL OR stream = %(stream)s)
      AND (%(types)s::text[] IS NULL OR type = ANY (%(types)s))
    ORDER BY position DESC LIMIT %(count)s
) newest;

-- name: log_head
SELECT position, encode(hash, 'hex') FROM events ORDER BY position DESC LIMIT 1;

-- name: agents_alive
SELECT id, host, pid, user_name, slots, started_at, heartbeat_at FROM agents
WHERE stopped_at IS NULL ORDER BY started_at;
