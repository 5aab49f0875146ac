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

-- name: runs_rebuild
-- The runs table exactly as the handlers in runs.py leave it after the log up to %(until)s, without
-- the events at %(skip)s (those the fold could not decode, which the handlers skip). A run's row is
-- made by RunPending, RunSubmitted or RunImported (its "creators"); events about a run before its first
-- creator find no row and are ignored, every later one touches updated_at and stream_version. Each
-- field is the value of the last event that set it, and every creator sets every field (a RunSubmitted
-- keeps created_at and cancel_requested, which follow the last RunPending or RunImported, else the
-- first creator). The one dependence on order: a RunStarted changes the status (and started_at,
-- job_id) only when the status the last other event set is not terminal (TERMINAL_STATES in runs.py).
-- Each run's events are sorted once by position: windows find its creators and, for each RunStarted,
-- whether it applies; arrays aggregated in that order give each field's last value.
SELECT id, r_doc ->> 'name' AS name, r_doc ->> 'user' AS user_name, status[cardinality(status)] AS status,
       r_doc ->> 'executor' AS executor, job_id[cardinality(job_id)] AS job_id,
       exit_code[cardinality(exit_code)] AS exit_code, signal[cardinality(signal)] AS signal,
       reason[cardinality(reason)] AS reason, r_doc ->> 'run_dir' AS run_dir,
       CASE WHEN r_type <> 'RunPending' THEN r_doc ->> 'cache_key' END AS cache_key,
       producer_run_id[cardinality(producer_run_id)] AS producer_run_id,
       r_doc ->> 'pipeline_id' AS pipeline_id, r_doc ->> 'stage_name' AS stage_name,
       CASE WHEN r_type <> 'RunImported' THEN r_doc ->> 'sweep_id' END AS sweep_id,
       CASE WHEN r_type <> 'RunImported' THEN (r_doc ->> 'sweep_index')::integer END AS sweep_index,
       CASE WHEN r_type <> 'RunImported' THEN r_doc ->> 'recipe_path' END AS recipe_path,
       r_doc -> 'recipe' AS recipe,
       CASE WHEN r_type <> 'RunPending' THEN r_doc ->> 'repo' END AS repo,
       CASE WHEN r_type <> 'RunPending' THEN r_doc ->> 'repo_commit' END AS repo_commit,
       CASE WHEN r_type = 'RunSubmitted' THEN (r_doc ->> 'repo_dirty')::boolean END AS repo_dirty,
       agent_id[cardinality(agent_id)] AS agent_id, cancel_requested, created_at,
       started_at[cardinality(started_at)] AS started_at, finished_at[cardinality(finished_at)] AS finished_at,
       updated_at, stream_version
FROM (
    SELECT run_id AS id,
           (array_agg(doc) FILTER (WHERE position = last_creator))[1] AS r_doc,
           (array_agg(type) FILTER (WHERE position = last_creator))[1] AS r_type,
           (array_agg(created_at) FILTER (WHERE position = anchor))[1] AS created_at,
           bool_or(type = 'CancelRequested' AND position > anchor) AS cancel_requested,
           (array_agg(recorded_at) FILTER (WHERE position = last_position))[1] AS updated_at,
           (array_agg(version) FILTER (WHERE position = last_position))[1] AS stream_version,
           array_agg(coalesce(status, 'running') ORDER BY position)
               FILTER (WHERE (status IS NOT NULL OR type = 'RunStarted') AND applies AND position >= last_creator)
               AS status,
           array_agg(job_id ORDER BY position) FILTER (WHERE sets_job_id AND applies AND position >= last_creator)
               AS job_id,
           array_agg(agent_id ORDER BY position) FILTER (WHERE sets_agent_id AND position >= last_creator)
               AS agent_id,
           array_agg(exit_code ORDER BY position) FILTER (WHERE ends AND position >= last_creator) AS exit_code,
           array_agg(signal ORDER BY position) FILTER (WHERE ends AND position >= last_creator) AS signal,
           array_agg(reason ORDER BY position) FILTER (WHERE ends AND position >= last_creator) AS reason,
           array_agg(started_at ORDER BY position)
               FILTER (WHERE sets_started_at AND applies AND position >= last_creator) AS started_at,
           array_agg(finished_at ORDER BY position) FILTER (WHERE sets_finished_at AND position >= last_creator)
               AS finished_at,
           array_agg(producer_run_id ORDER BY position)
               FILTER (WHERE sets_producer AND position >= last_creator) AS producer_run_id
    FROM (
        SELECT ev.*,
               max(position) FILTER (WHERE creates) OVER run AS last_creator,
               min(position) FILTER (WHERE creates) OVER run AS first_creator,
               -- where created_at and cancel_requested were last reset
               greatest(min(position) FILTER (WHERE creates) OVER run,
                        max(position) FILTER (WHERE type IN ('RunPending', 'RunImported')) OVER run) AS anchor,
               max(position) OVER run AS last_position,
               -- a RunStarted applies when the last status set before it (its position, zero-padded so
               -- that text order is numeric order, then 1 if terminal) is not terminal
               type <> 'RunStarted'
               OR right(max(lpad(position::text, 19, '0') || (status IN ('succeeded', 'failed', 'cancelled', 'timeout',
                                                                         'oom', 'node_fail', 'dependency_failed',
                                                                         'unknown_terminal', 'cache_hit'))::integer)
                        OVER before, 1) = '0' AS applies
        FROM (
            SELECT e.position, e.type, e.version, e.recorded_at, d.doc ->> 'run_id' AS run_id,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported') AS creates,
                   e.type = 'RunFinished' OR e.type IN ('RunPending', 'RunSubmitted', 'RunImported') AS ends,
                   CASE WHEN e.type IN ('RunPending', 'RunSubmitted', 'RunImported') THEN d.doc END AS doc,
                   CASE e.type WHEN 'RunImported' THEN (d.doc ->> 'created_at')::timestamptz ELSE e.recorded_at END
                       AS created_at,
                   -- the status an event sets whatever the status was (RunStarted: see applies)
                   CASE e.type
                       WHEN 'RunPending' THEN 'created'
                       WHEN 'RunSubmitted' THEN 'submitted'
                       WHEN 'RunImported' THEN d.doc ->> 'status'
                       WHEN 'RunCacheHit' THEN 'cache_hit'
                       WHEN 'RunCoalesced' THEN 'awaiting_peer'
                       WHEN 'RunFinished' THEN d.doc ->> 'state'
                       WHEN 'RunStatusImported' THEN d.doc ->> 'status'
                   END AS status,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'JobSubmitted')
                   OR e.type IN ('RunStarted', 'RunStatusImported') AND d.doc ->> 'job_id' <> '' AS sets_job_id,
                   CASE WHEN e.type IN ('RunImported', 'JobSubmitted', 'RunStarted', 'RunStatusImported')
                        THEN d.doc ->> 'job_id' END AS job_id,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunClaimed', 'SubmissionIntended')
                   OR e.type = 'JobSubmitted' AND d.doc ->> 'agent_id' <> '' AS sets_agent_id,
                   CASE WHEN e.type IN ('RunClaimed', 'SubmissionIntended', 'JobSubmitted')
                        THEN d.doc ->> 'agent_id' END AS agent_id,
                   CASE WHEN e.type = 'RunFinished' THEN (d.doc ->> 'exit_code')::integer END AS exit_code,
                   CASE WHEN e.type = 'RunFinished' THEN (d.doc ->> 'signal')::integer END AS signal,
                   CASE WHEN e.type = 'RunFinished' THEN d.doc ->> 'reason' END AS reason,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunStarted')
                   OR e.type = 'RunFinished' AND d.doc ->> 'started_at' IS NOT NULL AS sets_started_at,
                   CASE WHEN e.type IN ('RunStarted', 'RunFinished') THEN (d.doc ->> 'started_at')::timestamptz END
                       AS started_at,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunCacheHit', 'RunFinished',
                              'RunStatusImported') AS sets_finished_at,
                   CASE e.type
                       WHEN 'RunImported' THEN (d.doc ->> 'finished_at')::timestamptz
                       WHEN 'RunCacheHit' THEN e.recorded_at
                       WHEN 'RunFinished' THEN coalesce((d.doc ->> 'finished_at')::timestamptz, e.recorded_at)
                       WHEN 'RunStatusImported' THEN (d.doc ->> 'finished_at')::timestamptz
                   END AS finished_at,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunCacheHit', 'RunCoalesced')
                       AS sets_producer,
                   CASE WHEN e.type IN ('RunImported', 'RunCacheHit', 'RunCoalesced')
                        THEN d.doc ->> 'producer_run_id' END AS producer_run_id
            FROM labctl.events AS e
            CROSS JOIN LATERAL (SELECT e.data::jsonb AS doc OFFSET 0) AS d
            WHERE e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunCacheHit', 'RunCoalesced',
                             'RunClaimed', 'SubmissionIntended', 'JobSubmitted', 'RunStarted', 'RunFinished',
                             'CancelRequested', 'RunStatusImported')
              AND e.position <= %(until)s
              AND e.position <> ALL (%(skip)s::bigint[])
        ) AS ev
        WINDOW run AS (PARTITION BY run_id ORDER BY position ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING),
               before AS (PARTITION BY run_id ORDER BY position ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ) AS w
    WHERE position >= first_creator
    GROUP BY run_id
) AS runs
