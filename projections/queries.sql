-- Read models a rebuild computes in the server instead of folding them in Python.

-- name: metrics_rebuild
-- The metrics table exactly as the MetricsLogged handler in metrics.py writes it, for the log up to
-- %(until)s. Metric points are most of a long log's rows (each MetricsLogged event brings dozens):
-- folded in Python they were held in memory until written, 22 GB at 10M events. Here the server
-- sorts them (spilling to disk) and keeps the last write of each (run, name, step), as the handler's
-- put does: later events, later points and later duplicate keys of one JSON object win.
--
-- Each expression mirrors the handler. The event is parsed once, as jsonb (json would be parsed again
-- by every operator applied to it), which also keeps the last of duplicate keys, as the decoder does.
-- A JSON number is the double nearest to it (one too small for a double is a signed zero, as in
-- Python, where the cast would refuse it); the strings "inf"/"-inf" are infinities, any other string
-- (e.g. "nan") is NULL; `at` becomes a time as datetime.fromtimestamp rounds it (whole seconds, then
-- the fraction's microseconds rounded half to even); with no `at`, the event's own time. %(skip)s
-- are the positions of MetricsLogged events the fold could not decode, which the handler ignores.
SELECT DISTINCT ON (run_id, name, step) run_id, name, step, value, logged_at
FROM (
    SELECT d.doc ->> 'run_id' AS run_id,
           v.key AS name,
           (p.point ->> 'step')::bigint AS step,
           CASE jsonb_typeof(v.value)
               WHEN 'number' THEN
                   CASE WHEN abs(v.value::numeric) <= 2.4703282292062327208828439643411068618e-324
                        THEN CASE WHEN v.value::numeric < 0 THEN '-0' ELSE '0' END::double precision
                        ELSE v.value::double precision
                   END
               WHEN 'string' THEN
                   CASE v.value #>> ARRAY[]::text[]
                       WHEN 'inf' THEN 'Infinity'::double precision
                       WHEN '-inf' THEN '-Infinity'::double precision
                   END
           END AS value,
           CASE WHEN t.at IS NULL THEN e.recorded_at
                ELSE to_timestamp(trunc(t.at)) + round((t.at - trunc(t.at)) * 1000000::double precision)
                                                 * interval '1 microsecond'
           END AS logged_at,
           e.position, p.i
    FROM labctl.events AS e
    CROSS JOIN LATERAL (SELECT e.data::jsonb AS doc OFFSET 0) AS d  -- (OFFSET 0: parsed once, not per use)
    CROSS JOIN LATERAL jsonb_array_elements(d.doc -> 'points') WITH ORDINALITY AS p (point, i)
    CROSS JOIN LATERAL (
        SELECT CASE WHEN jsonb_typeof(p.point -> 'at') IS DISTINCT FROM 'number' THEN NULL
                    WHEN abs((p.point -> 'at')::numeric) <= 2.4703282292062327208828439643411068618e-324 THEN 0
                    ELSE (p.point -> 'at')::double precision
               END AS at
    ) AS t
    CROSS JOIN LATERAL jsonb_each(p.point -> 'values') AS v (key, value)
    WHERE e.type = 'MetricsLogged'
      AND e.position <= %(until)s
      AND e.position <> ALL (%(skip)s::bigint[])
) AS points
ORDER BY run_id, name, step, position DESC, i DESC
