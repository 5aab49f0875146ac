-- Queries of running jobs on SLURM (slurm_runs.py): submission, recovery after an interrupted sbatch, reconcile.
-- Optional filters are nullable parameters (``%(x)s::text IS NULL OR col = %(x)s``), never SQL fragments.

-- name: sweeps_of_runs
SELECT id, sweep_id FROM runs WHERE id = ANY (%(run_ids)s)

-- name: run_name
SELECT name FROM runs WHERE id = %(id)s

-- name: sweep_throttle
SELECT throttle FROM sweeps WHERE id = %(id)s

-- name: interrupted_submissions
-- SLURM runs claimed by a submitter longer than ``grace`` ago with no job id recorded (only ``user``'s unless
-- NULL): the submitter may have died between sbatch and recording the job.
SELECT id, sweep_id, sweep_index, updated_at, name
FROM runs
WHERE executor = 'slurm' AND status = 'submitted' AND agent_id IS NOT NULL AND job_id IS NULL
  AND updated_at < now() - %(grace)s::interval
  AND (%(user)s::text IS NULL OR user_name = %(user)s)

-- name: active_jobs
-- SLURM runs with a job that has not ended (only ``user``'s unless NULL), with their sweep's index range.
SELECT r.id, r.job_id, r.status, r.created_at, s.start_index, s.end_index, r.run_dir
FROM runs r LEFT JOIN sweeps s ON s.id = r.sweep_id
WHERE r.executor = 'slurm' AND r.status IN ('submitted', 'running') AND r.job_id IS NOT NULL
  AND (%(user)s::text IS NULL OR r.user_name = %(user)s)
