-- Queries of eval policies (evals.py), the eval table (eval_table.py) and their commands.
-- Optional filters are nullable parameters (``%(x)s::text IS NULL OR col = %(x)s``), never SQL fragments.

-- name: unevaluated_checkpoints
-- Live checkpoints of ``kind`` (only ``ids`` unless NULL) without an eval by this eval recipe, oldest first.
-- An eval the original labctl requested under this policy counts (its recipe hash is computed its own way).
SELECT a.id, a.path, a.hash, a.kind, a.user_name AS user, (a.metadata ->> 'step')::int AS step,
       a.metadata ->> 'producer_recipe' AS producer_recipe
FROM artifacts a
WHERE a.kind = %(kind)s AND a.removed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM evals e
                  WHERE e.checkpoint_artifact_id = a.id
                    AND (e.eval_recipe_hash = %(hash)s
                         OR (e.policy = %(policy)s
                             AND EXISTS (SELECT 1 FROM imported_evals i WHERE i.eval_key = e.eval_key))))
  AND (%(ids)s::text[] IS NULL OR a.id = ANY (%(ids)s))
ORDER BY a.created_at

-- name: checkpoints_of_kind
-- How many live artifacts of ``kind`` there are (only ``user``'s unless NULL).
SELECT count(*) FROM artifacts
WHERE kind = %(kind)s AND removed_at IS NULL AND (%(user)s::text IS NULL OR user_name = %(user)s)

-- name: unrecorded_evals
-- Evals run by these runs whose metrics are not recorded yet.
SELECT e.eval_key, e.run_id, r.status
FROM evals e JOIN runs r ON r.id = e.run_id
WHERE e.run_id = ANY (%(run_ids)s) AND e.recorded_at IS NULL

-- name: eval_result
-- What an eval run's eval_result output holds.
SELECT a.metadata -> 'result'
FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id
WHERE o.run_id = %(run_id)s AND a.kind = 'eval_result'
LIMIT 1

-- name: eval_rows
-- Evals with the producing run, the step, the eval run's state and metrics (of ``policy``, of ``producer``'s
-- checkpoints, each unless NULL), by step.
SELECT e.policy, a.producer_run_id AS producer, e.step, e.checkpoint_artifact_id AS checkpoint,
       e.run_id AS eval_run, r.status AS state, e.metrics
FROM evals e
JOIN artifacts a ON a.id = e.checkpoint_artifact_id
LEFT JOIN runs r ON r.id = e.run_id
WHERE (%(policy)s::text IS NULL OR e.policy = %(policy)s)
  AND (%(producer)s::text IS NULL OR a.producer_run_id = %(producer)s)
ORDER BY e.policy, a.producer_run_id, e.step NULLS FIRST

-- name: eval_table
-- `labctl eval table`: each eval with the training run's sweep argument and point, its recipe, the result.
SELECT e.policy, a.producer_run_id, s.arg, tr.sweep_index, e.step, e.run_id, r.status, e.metrics, tr.recipe
FROM evals e
JOIN artifacts a ON a.id = e.checkpoint_artifact_id
LEFT JOIN runs r ON r.id = e.run_id
LEFT JOIN runs tr ON tr.id = a.producer_run_id
LEFT JOIN sweeps s ON s.id = tr.sweep_id
WHERE (%(policy)s::text IS NULL OR e.policy = %(policy)s)
  AND (%(producer)s::text IS NULL OR a.producer_run_id = %(producer)s)
ORDER BY e.policy, s.arg NULLS LAST, tr.sweep_index NULLS LAST, a.producer_run_id, e.step NULLS FIRST

-- name: recorded_policies
SELECT DISTINCT policy FROM evals

-- name: eval_series
-- The recorded eval metrics of a run's checkpoints, by step.
SELECT e.step, e.metrics
FROM evals e JOIN artifacts a ON a.id = e.checkpoint_artifact_id
WHERE a.producer_run_id = %(run_id)s AND e.metrics IS NOT NULL
ORDER BY e.step NULLS FIRST
