-- name: metrics_of
-- Every point of these runs (only the named metrics when %(names)s is not NULL), by run, name, step.
SELECT run_id, name, step, value
FROM metrics
WHERE run_id = ANY (%(run_ids)s)
  AND (%(names)s::text[] IS NULL OR name = ANY (%(names)s))
ORDER BY run_id, name, step;

-- name: metric_summaries
-- Per run and metric: points, first and last step, last value, min and max (NaN points are NULL and skipped).
SELECT run_id, name, count(*) AS points, min(step) AS first_step, max(step) AS last_step,
       (array_agg(value ORDER BY step DESC))[1] AS last_value,
       min(value) AS min_value, max(value) AS max_value,
       (array_agg(step ORDER BY value ASC NULLS LAST, step))[1] AS step_of_min,
       (array_agg(step ORDER BY value DESC NULLS LAST, step))[1] AS step_of_max
FROM metrics
WHERE run_id = ANY (%(run_ids)s)
  AND (%(names)s::text[] IS NULL OR name = ANY (%(names)s))
GROUP BY run_id, name
ORDER BY run_id, name;

-- name: metric_file
-- How far a run's metrics file has been ingested.
SELECT batches, byte_offset, points, skipped FROM metric_files WHERE run_id = %(run_id)s;

-- name: runs_of_sweep
SELECT id FROM runs WHERE sweep_id = %(id)s ORDER BY sweep_index NULLS LAST, id

-- name: runs_of_pipeline
SELECT id FROM runs WHERE pipeline_id = %(id)s ORDER BY created_at, sweep_index NULLS LAST, id

-- name: metric_sources
-- run id -> the run whose metrics it has: a cache hit or a coalesced run shows its producer's.
SELECT id,
       CASE WHEN status IN ('cache_hit', 'awaiting_peer') OR producer_run_id IS NOT NULL
            THEN coalesce(producer_run_id, id) ELSE id END
FROM runs WHERE id = ANY (%(run_ids)s)

-- name: sweep_points_of
-- The sweep, its argument and the point index of each of these runs (NULLs for a run outside a sweep).
SELECT r.id, s.id, s.arg, r.sweep_index
FROM runs r LEFT JOIN sweeps s ON s.id = r.sweep_id
WHERE r.id = ANY (%(run_ids)s)
