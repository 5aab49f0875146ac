-- name: pipelines_json
-- Newest pipelines first, each with its stages in order; a stage's status is
-- its runs' common status, "running" while any runs, else "mixed".
SELECT coalesce(json_agg(p ORDER BY p.created_at DESC, p.id DESC), '[]')::text
FROM (
    SELECT pl.id, pl.name, pl.user_name AS user, pl.status, pl.reason, pl.created_at, pl.finished_at,
           coalesce((
               SELECT json_agg(json_build_object(
                          'name', st.stage_name,
                          'parents', st.parents,
                          'status', stage.status,
                          'runs', stage.runs
                      ) ORDER BY st.ordinal)
               FROM pipeline_stages st
               CROSS JOIN LATERAL (
                   SELECT CASE
                              WHEN count(r.id) = 0 THEN 'created'
                              WHEN count(DISTINCT r.status) = 1 THEN min(r.status)
                              WHEN bool_or(r.status = 'running') THEN 'running'
                              ELSE 'mixed'
                          END AS status,
                          coalesce(json_agg(json_build_object('id', r.id, 'status', r.status, 'exit_code', r.exit_code)
                                            ORDER BY r.sweep_index NULLS FIRST, r.id)
                                   FILTER (WHERE r.id IS NOT NULL), '[]') AS runs
                   FROM unnest(st.run_ids) AS ids(run_id)
                   LEFT JOIN runs r ON r.id = ids.run_id
               ) stage
               WHERE st.pipeline_id = pl.id
           ), '[]') AS stages
    FROM pipelines pl
    ORDER BY pl.created_at DESC, pl.id DESC
    LIMIT %(limit)s
) p;

-- name: position_before_tail
-- The position just before the newest %(count)s events, to read them with read_all.
SELECT coalesce(min(position) - 1, 0)
FROM (SELECT position FROM events ORDER BY position DESC LIMIT %(count)s) newest;
