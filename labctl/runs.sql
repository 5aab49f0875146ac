-- What `labctl show` prints beside the run row, with the original's keys.

-- name: output_aliases
SELECT DISTINCT al.alias, al.artifact_id
FROM aliases al JOIN run_outputs o ON o.artifact_id = al.artifact_id
WHERE o.run_id = %(id)s ORDER BY 1, 2;

-- name: eval_requests
SELECT e.eval_key, e.checkpoint_artifact_id, e.eval_recipe_hash, e.policy, e.run_id, er.status
FROM evals e
LEFT JOIN artifacts a ON a.id = e.checkpoint_artifact_id
LEFT JOIN runs er ON er.id = e.run_id
WHERE a.producer_run_id = %(id)s OR e.run_id = %(id)s
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
