-- Queries of `labctl import`: the original registry's tables (source, schema public)
-- and what an earlier import already brought into our read models (target).
-- {peer}, {content_hash}, {alias_segment} are the original's columns where its version has them.
-- The original keeps times as epoch seconds: they are read as timestamptz (to_timestamp, the session
-- in UTC), which the driver turns into datetimes in C. Lists of ids are one JSON array each (%(ids)s):
-- one string to send instead of an array built element by element in Python.

-- name: source_tables
SELECT table_name FROM information_schema.tables WHERE table_schema = 'public';

-- name: source_columns
SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema = 'public';

-- name: source_runs_light
SELECT id, status, job_id, to_timestamp(finished_at), pipeline_id, stage_name, dependency_on::text,
       to_timestamp(created_at), submitted_by
FROM public.runs;

-- name: source_runs_full
SELECT id, recipe_name, recipe_hash, status, job_id, run_dir, repo, source_path, recipe_json::text,
       context_json::text, to_timestamp(created_at), to_timestamp(finished_at), pipeline_id,
       dependency_on::text, stage_name, submitted_by, cache_key, {peer}
FROM public.runs WHERE id = ANY (ARRAY(SELECT json_array_elements_text(%(ids)s::json)));

-- name: source_inputs
SELECT run_id, role, artifact_id, resolved_path FROM public.run_inputs
WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(%(ids)s::json)));

-- name: source_outputs
SELECT run_id, role, artifact_id FROM public.run_outputs;

-- name: source_tracking
SELECT run_id, entity, project, url, group_name, source, to_timestamp(created_at) FROM public.tracking;

-- name: source_event_marks
SELECT run_id, max(id), count(*) FROM public.events GROUP BY run_id;

-- name: source_history
-- The original's events rows of the given runs after each one's id (%(after)s: a JSON object run id -> id;
-- %(floor)s the smallest of them): one row per run, its rows as one JSON array in the shape of
-- OriginalEvent, decoded by the client in one call.
SELECT e.run_id,
       json_agg(json_build_object('id', e.id, 'type', e.event_type, 'payload', e.payload_json,
                                  'created_at', to_timestamp(e.created_at)) ORDER BY e.id)::text
FROM public.events e
JOIN json_each_text(%(after)s::json) AS w (run_id, after) ON w.run_id = e.run_id
WHERE e.id > %(floor)s AND e.id > w.after::bigint
GROUP BY e.run_id;

-- name: source_history_unowned
-- The same for the original's events rows of no run, after %(after)s (NULL when there are none).
SELECT json_agg(json_build_object('id', e.id, 'type', e.event_type, 'payload', e.payload_json,
                                  'created_at', to_timestamp(e.created_at)) ORDER BY e.id)::text
FROM public.events e
WHERE e.run_id IS NULL AND e.id > %(after)s;

-- name: source_artifacts
SELECT id, kind, path, {content_hash}, producer_run_id, metadata_json::text, to_timestamp(created_at), "user",
       {alias_segment}
FROM public.artifacts;

-- name: source_aliases
SELECT alias, artifact_id, to_timestamp(created_at) FROM public.artifact_aliases;

-- name: source_user_aliases
SELECT "user", alias, kind, artifact_id, to_timestamp(created_at) FROM public.artifact_user_aliases;

-- name: source_pipelines
SELECT id, name, pipeline_path, "user", to_timestamp(created_at) FROM public.pipelines;

-- name: source_evals
SELECT eval_key, checkpoint_artifact_id, eval_recipe_hash, policy_id, eval_run_id, state, attempts, "user",
       to_timestamp(created_at), to_timestamp(updated_at)
FROM public.eval_requests;

-- name: source_users
SELECT name, to_timestamp(created_at), pg_role FROM public.users;

-- name: target_runs
SELECT r.id, i.run_id IS NOT NULL, i.original_status, r.job_id, r.finished_at, i.last_event_id,
       i.tracking ->> 'url'
FROM runs r LEFT JOIN imported_runs i ON i.run_id = r.id;

-- name: target_outputs
SELECT run_id, artifact_id, role FROM run_outputs;

-- name: target_artifacts
SELECT id FROM artifacts;

-- name: target_aliases
SELECT user_name, alias, artifact_id, set_at FROM aliases;

-- name: target_pipelines
SELECT id, status, finished_at, (SELECT count(*) FROM pipeline_stages s WHERE s.pipeline_id = p.id)
FROM pipelines p;

-- name: target_evals
SELECT e.eval_key, i.state, i.attempts, e.run_id, e.metrics IS NOT NULL
FROM evals e LEFT JOIN imported_evals i ON i.eval_key = e.eval_key;

-- name: target_users
SELECT name FROM users;

-- name: target_unowned_mark
SELECT max((e.data -> 'events' -> -1 ->> 'id')::bigint) FROM events e WHERE e.stream = 'original-events';

-- name: target_streams
SELECT DISTINCT stream FROM events WHERE stream = ANY (ARRAY(SELECT json_array_elements_text(%(streams)s::json)));

-- name: source_events_mark
SELECT count(*), coalesce(max(id), 0) FROM public.events;

-- name: target_last_fingerprint
SELECT data ->> 'fingerprint' FROM events WHERE stream = %(stream)s ORDER BY version DESC LIMIT 1;

-- name: source_coalesce_claims
SELECT count(*) FROM public.coalesce_claims;

-- name: source_table_digest
-- Row count, the sum of the rows' versions (xmin: the transaction that wrote each) and the sum of a
-- 64-bit hash of each row version's (xmin, ctid) of one of the original's tables ({table}, from a fixed
-- list). An insert, update or delete changes the set of row versions, so the hashes' sum changes but by
-- a 2^-64 chance; the plain sum alone could be undone (rows deleted and others written by transactions
-- older than theirs). A table rewritten (VACUUM FULL) reads as changed: one full comparison, nothing
-- appended. Only the rows' headers are read: hashing each row's text cost 7x as much (4.3 s against
-- 0.65 s at 100k runs).
SELECT count(*), coalesce(sum(t.xmin::text::bigint), 0),
       coalesce(sum(hashtextextended(t.xmin::text || t.ctid::text, 0)), 0)
FROM {table} t;

-- name: target_imported_since
-- Runs imported after this source's last finished import (its last RegistryImported), by an import stopped midway.
SELECT data ->> 'run_id' FROM events
WHERE type = 'RunImported'
  AND position > coalesce((SELECT max(position) FROM events WHERE stream = %(stream)s), 0);
