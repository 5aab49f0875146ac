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


-- The agent (agent.py), its table (agents.py), its local runs (local_runs.py), reactors' checkpoints.

-- name: agents_alive
-- Agents that beat within ``stale`` seconds and serve ``user`` (any user when NULL; the service user's
-- serve everyone), scoped ones (started by --wait for one pipeline or sweep) only if ``include_scoped``.
SELECT id FROM agents
WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %(stale)s)
  AND (%(user)s::text IS NULL OR user_name = %(user)s OR user_name = %(service)s)
  AND (%(include_scoped)s::boolean OR scope IS NULL)

-- name: register_agent
INSERT INTO agents (id, host, pid, user_name, slots, scope)
VALUES (%(id)s, %(host)s, %(pid)s, %(user)s, %(slots)s, %(scope)s)

-- name: heartbeat
UPDATE agents SET heartbeat_at = now() WHERE id = %(id)s

-- name: mark_agent_stopped
UPDATE agents SET stopped_at = now() WHERE id = %(id)s

-- name: runs_of_stale_agents
-- Local runs held by another agent that stopped or has not beaten within ``stale`` seconds.
SELECT r.id AS run_id, r.job_id, a.id AS agent_id, r.user_name AS user
FROM runs r JOIN agents a ON a.id = r.agent_id
WHERE r.executor = 'local' AND r.status IN ('submitted', 'running') AND a.id <> %(id)s
  AND (a.stopped_at IS NOT NULL OR a.heartbeat_at < now() - make_interval(secs => %(stale)s))

-- name: stop_stale_agents
UPDATE agents SET stopped_at = now()
WHERE stopped_at IS NULL AND id <> %(id)s AND heartbeat_at < now() - make_interval(secs => %(stale)s)

-- name: unfinished_runs_count
-- Runs not ended yet (only ``user``'s unless NULL): what an agent started with --until-idle waits for.
SELECT count(*) FROM runs
WHERE status IN ('created', 'submitted', 'running', 'awaiting_peer')
  AND (%(user)s::text IS NULL OR user_name = %(user)s)

-- name: reactor_positions
SELECT name, position FROM reactor_checkpoints WHERE name = ANY (%(names)s)

-- name: cancelled_jobs
-- Job ids of this agent's runs whose cancel was requested and that have not ended.
SELECT job_id FROM runs WHERE agent_id = %(agent_id)s AND cancel_requested AND status IN ('submitted', 'running')

-- name: run_versions
SELECT id, stream_version FROM runs WHERE id = ANY (%(ids)s)

-- name: reactor_position
SELECT position FROM reactor_checkpoints WHERE name = %(name)s

-- name: set_reactor_position
INSERT INTO reactor_checkpoints (name, position, updated_at) VALUES (%(name)s, %(position)s, now())
ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()

-- name: submissions
-- Each run's latest RunSubmitted (what it promised when submitted), read from the log: the run streams' own.
SELECT DISTINCT ON (stream) substr(stream, 5), data::text FROM events
WHERE stream = ANY (%(streams)s) AND type = 'RunSubmitted'
ORDER BY stream, version DESC
