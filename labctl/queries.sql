-- Named queries of labctl's library modules, loaded once by events.queries.load_queries.
-- Optional filters are nullable parameters (``%(x)s::text IS NULL OR col = %(x)s``), never SQL fragments.

-- name: queued_runs
-- Queued runs nobody holds yet, oldest first; only ``user``'s unless NULL; only the scope's unless
-- ``scoped`` is false (an agent started by --wait runs only its runs, pipeline or sweep).
SELECT id, stream_version, user_name, sweep_id FROM runs
WHERE status = 'submitted' AND executor = %(executor)s AND agent_id IS NULL AND job_id IS NULL
  AND (%(user)s::text IS NULL OR user_name = %(user)s)
  AND (NOT %(scoped)s
       OR id = ANY(%(scope_runs)s::text[])
       OR pipeline_id = %(scope_pipeline)s::text
       OR sweep_id = %(scope_sweep)s::text)
ORDER BY created_at, sweep_index NULLS FIRST, id
LIMIT %(window)s

-- name: active_runs
-- Runs that hold a slot: running, or submitted and already claimed or handed to SLURM.
SELECT user_name, sweep_id FROM runs
WHERE status = 'running' OR (status = 'submitted' AND (agent_id IS NOT NULL OR job_id IS NOT NULL))

-- name: sweep_throttles
SELECT id, throttle FROM sweeps WHERE id = ANY(%(sweep_ids)s)

-- name: run_resources
-- What each run's recipe asks of the machine (its [resources]), for the local agent's packing.
SELECT id, recipe->'resources' FROM runs WHERE id = ANY(%(run_ids)s)
