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
