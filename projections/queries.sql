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
-- Run ids and names are sorted bytewise (COLLATE "C", as in runs_rebuild): equal keys are equal
-- bytes under any deterministic collation, and a locale's rules only slow the sort of every point.
SELECT DISTINCT ON (run_id, name, step) run_id, name, step, value, logged_at
FROM (
    SELECT d.doc ->> 'run_id' COLLATE "C" AS run_id,
           v.key COLLATE "C" AS name,
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
-- the events at %(skip)s (those the fold could not decode, which the handlers skip too).
--
-- A run's row is made by RunPending, RunSubmitted or RunImported (its "creators"), each of which sets
-- every field; events about a run before its first creator find no row and are ignored. So each field
-- is the value of the last event that set it (the last creator at least): each run's events are
-- sorted once by position, a window gives the position of each field's last setter, and the group of
-- the run's rows takes the value at that position. Two fields reach further back: created_at and
-- cancel_requested follow the last RunPending or RunImported (a RunSubmitted keeps them), else the
-- first creator. The one dependence on order: a RunStarted changes the status (and started_at,
-- job_id) only when the last status another event set is not terminal (TERMINAL_STATES in runs.py).
--
-- Each event is parsed once, into text fields (json_to_record: no jsonb tree is built, the recipe
-- stays text until the one that counts is cast); values are cast only for the types that carry them
-- (an unknown field of another type is ignored, as the decoder ignores it). Text from JSON is the
-- decoded string, the last of duplicate keys, as the decoder reads it. The run ids are compared bytewise
-- (COLLATE "C"): the sort by run is most of the work, and a locale's rules only slow it.
SELECT run_id AS id,
       max(name) FILTER (WHERE position = last_creator) AS name,
       max("user") FILTER (WHERE position = last_creator) AS user_name,
       max(CASE WHEN type = 'RunStarted' THEN 'running' ELSE new_status END) FILTER (WHERE position = last_status)
           AS status,
       max(executor) FILTER (WHERE position = last_creator) AS executor,
       max(new_job_id) FILTER (WHERE position = last_job_id) AS job_id,
       max(exit_code) FILTER (WHERE position = last_end) AS exit_code,
       max(signal) FILTER (WHERE position = last_end) AS signal,
       max(reason) FILTER (WHERE position = last_end) AS reason,
       max(run_dir) FILTER (WHERE position = last_creator) AS run_dir,
       max(cache_key) FILTER (WHERE position = last_creator AND type <> 'RunPending') AS cache_key,
       max(new_producer) FILTER (WHERE position = last_producer) AS producer_run_id,
       max(pipeline_id) FILTER (WHERE position = last_creator) AS pipeline_id,
       max(stage_name) FILTER (WHERE position = last_creator) AS stage_name,
       max(sweep_id) FILTER (WHERE position = last_creator AND type <> 'RunImported') AS sweep_id,
       max(sweep_index::integer) FILTER (WHERE position = last_creator AND type <> 'RunImported') AS sweep_index,
       max(recipe_path) FILTER (WHERE position = last_creator AND type <> 'RunImported') AS recipe_path,
       max(recipe) FILTER (WHERE position = last_creator)::jsonb AS recipe,
       max(repo) FILTER (WHERE position = last_creator AND type <> 'RunPending') AS repo,
       max(repo_commit) FILTER (WHERE position = last_creator AND type <> 'RunPending') AS repo_commit,
       bool_or(repo_dirty::boolean) FILTER (WHERE position = last_creator AND type = 'RunSubmitted') AS repo_dirty,
       max(new_agent_id) FILTER (WHERE position = last_agent_id) AS agent_id,
       coalesce(max(last_cancel) > max(anchor), false) AS cancel_requested,
       max(new_created_at) FILTER (WHERE position = anchor) AS created_at,
       max(new_started_at) FILTER (WHERE position = last_started_at) AS started_at,
       max(new_finished_at) FILTER (WHERE position = last_finished_at) AS finished_at,
       max(recorded_at) FILTER (WHERE position = last_event) AS updated_at,
       max(version) FILTER (WHERE position = last_event) AS stream_version
FROM (
    SELECT a.*,
           max(position) FILTER (WHERE creates) OVER run AS last_creator,
           -- where created_at and cancel_requested were last reset
           greatest(min(position) FILTER (WHERE creates) OVER run,
                    max(position) FILTER (WHERE type IN ('RunPending', 'RunImported')) OVER run) AS anchor,
           max(position) FILTER (WHERE (new_status IS NOT NULL OR type = 'RunStarted') AND applies) OVER run
               AS last_status,
           max(position) FILTER (WHERE sets_job_id AND applies) OVER run AS last_job_id,
           max(position) FILTER (WHERE sets_agent_id) OVER run AS last_agent_id,
           max(position) FILTER (WHERE creates OR type = 'RunFinished') OVER run AS last_end,
           max(position) FILTER (WHERE sets_started_at AND applies) OVER run AS last_started_at,
           max(position) FILTER (WHERE sets_finished_at) OVER run AS last_finished_at,
           max(position) FILTER (WHERE creates OR type IN ('RunCacheHit', 'RunCoalesced')) OVER run AS last_producer,
           max(position) FILTER (WHERE type = 'CancelRequested') OVER run AS last_cancel,
           max(position) OVER run AS last_event
    FROM (
        SELECT ev.*,
               -- a RunStarted applies when the last status set before it is not terminal
               type <> 'RunStarted'
               OR coalesce(max(position) FILTER (WHERE new_status IN ('succeeded', 'failed', 'cancelled', 'timeout',
                                                                      'oom', 'node_fail', 'dependency_failed',
                                                                      'unknown_terminal', 'cache_hit')) OVER before, 0)
                  < coalesce(max(position) FILTER (WHERE new_status IS NOT NULL) OVER before, 0) AS applies
        FROM (
            SELECT e.position, e.type, e.version, e.recorded_at, x.run_id COLLATE "C" AS run_id,
                   x.name, x."user", x.executor, x.run_dir, x.recipe, x.recipe_path, x.cache_key, x.repo,
                   x.repo_commit, x.repo_dirty, x.pipeline_id, x.stage_name, x.sweep_id, x.sweep_index,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported') AS creates,
                   CASE e.type WHEN 'RunImported' THEN x.created_at::timestamptz ELSE e.recorded_at END
                       AS new_created_at,
                   -- the status an event sets whatever the status was (RunStarted: see applies)
                   CASE e.type
                       WHEN 'RunPending' THEN 'created'
                       WHEN 'RunSubmitted' THEN 'submitted'
                       WHEN 'RunImported' THEN x.status
                       WHEN 'RunCacheHit' THEN 'cache_hit'
                       WHEN 'RunCoalesced' THEN 'awaiting_peer'
                       WHEN 'RunFinished' THEN x.state
                       WHEN 'RunStatusImported' THEN x.status
                   END AS new_status,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'JobSubmitted')
                   OR e.type IN ('RunStarted', 'RunStatusImported') AND x.job_id <> '' AS sets_job_id,
                   CASE WHEN e.type IN ('RunImported', 'JobSubmitted', 'RunStarted', 'RunStatusImported')
                        THEN x.job_id END AS new_job_id,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunClaimed', 'SubmissionIntended')
                   OR e.type = 'JobSubmitted' AND x.agent_id <> '' AS sets_agent_id,
                   CASE WHEN e.type IN ('RunClaimed', 'SubmissionIntended', 'JobSubmitted') THEN x.agent_id END
                       AS new_agent_id,
                   CASE WHEN e.type = 'RunFinished' THEN x.exit_code::integer END AS exit_code,
                   CASE WHEN e.type = 'RunFinished' THEN x.signal::integer END AS signal,
                   CASE WHEN e.type = 'RunFinished' THEN x.reason END AS reason,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunStarted')
                   OR e.type = 'RunFinished' AND x.started_at IS NOT NULL AS sets_started_at,
                   CASE WHEN e.type IN ('RunStarted', 'RunFinished') THEN x.started_at::timestamptz END
                       AS new_started_at,
                   e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunCacheHit', 'RunFinished',
                              'RunStatusImported') AS sets_finished_at,
                   CASE e.type
                       WHEN 'RunImported' THEN x.finished_at::timestamptz
                       WHEN 'RunCacheHit' THEN e.recorded_at
                       WHEN 'RunFinished' THEN coalesce(x.finished_at::timestamptz, e.recorded_at)
                       WHEN 'RunStatusImported' THEN x.finished_at::timestamptz
                   END AS new_finished_at,
                   CASE WHEN e.type IN ('RunImported', 'RunCacheHit', 'RunCoalesced') THEN x.producer_run_id END
                       AS new_producer
            FROM labctl.events AS e
            CROSS JOIN LATERAL json_to_record(e.data) AS x (
                run_id text, name text, "user" text, executor text, run_dir text, recipe text, recipe_path text,
                cache_key text, repo text, repo_commit text, repo_dirty text, pipeline_id text, stage_name text,
                sweep_id text, sweep_index text, status text, state text, created_at text, finished_at text,
                started_at text, job_id text, agent_id text, producer_run_id text, exit_code text, signal text,
                reason text
            )
            WHERE e.type IN ('RunPending', 'RunSubmitted', 'RunImported', 'RunCacheHit', 'RunCoalesced',
                             'RunClaimed', 'SubmissionIntended', 'JobSubmitted', 'RunStarted', 'RunFinished',
                             'CancelRequested', 'RunStatusImported')
              AND e.position <= %(until)s
              AND e.position <> ALL (%(skip)s::bigint[])
              -- part %(part)s of %(parts)s of the runs (see Table.rebuild_parts), by a hash of the stream, known
              -- before the event is parsed: labctl appends a run's events to the stream 'run-' || its id. An
              -- event on another stream (or without a run id) could put its run in two parts: meeting one, a
              -- part fails (dividing by zero), and the rebuild computes the table again in one part.
              AND (%(parts)s = 1 OR abs(mod(hashtext(e.stream), %(parts)s)) = %(part)s)
              AND (%(parts)s = 1 OR 1 / (e.stream IS NOT DISTINCT FROM 'run-' || x.run_id)::integer = 1)
        ) AS ev
        WINDOW before AS (PARTITION BY run_id ORDER BY position ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ) AS a
    WINDOW run AS (PARTITION BY run_id ORDER BY position ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) AS w
WHERE last_creator IS NOT NULL
GROUP BY run_id


-- name: artifacts_rebuild
-- ---------------------------------------------------------------------------------------------------
-- The other read models beside runs and metrics (artifacts.py, evals.py, pipelines.py, imports.py and
-- metrics.py's metric_files), each as its handlers write it for the log up to %(until)s, without the
-- events at positions %(skip)s (those the fold could not decode, which every handler ignores).
--
-- How they mirror the handlers, throughout:
-- * Each event is parsed once, by json_to_record / json_to_recordset into the fields the handler
--   reads (json, not jsonb: nothing is built for the fields not read, e.g. a run's recipe). Like the
--   decoder, the last of duplicate keys wins, a missing or null field is NULL, and an object field
--   comes out as jsonb, which is what the handler's dict becomes when it is written.
-- * An event that decoded has the types the handler expects (the decoder refused anything else), so
--   the casts here cannot fail on what the handlers accept.
-- * A put is the last write of its key: DISTINCT ON (key) ... ORDER BY key, position DESC (and, for
--   rows put from one event's list, the later element first). A delete is a last write that leaves
--   no row.
-- * A handler that reads its row back and changes it (gc's ArtifactsCollected, PipelineFinished,
--   SweepFinished, EvalRecorded, RunStatusImported, OriginalEventsImported) changes the row put by the
--   latest creating event before it, or nothing if there is none: the last such event after the
--   creating one is what a row shows. One pass over each key's events in log order computes both
--   (window aggregates; the row is the one of the last creating event): a join of two DISTINCT ON
--   results was planned as a nested loop, whose rows Postgres cannot estimate (4 s for 3,000 evals).
-- * The server cannot parse a \u0000 (NUL) escape into text: an event with one in any field (the text
--   columns could not hold one either, but a handler never reads some fields, e.g. a run's repo_diff)
--   fails the rebuild with Postgres' error naming it, where the fold would pass it.
-- * Datetimes inside events are parsed as Postgres parses timestamptz: the same instant as the
--   decoder's for everything the encoder writes (at most six digits of a second).
--
-- artifacts: put by ArtifactRegistered (created now) and ArtifactImported (created when the original
-- did, size unknown); gc's ArtifactsCollected marks the current row removed.
SELECT id, hash, kind, path, user_name, producer_run_id, size_bytes, metadata, created_at,
       CASE WHEN collected_position > position THEN collected_times[cardinality(collected_times)] END AS removed_at
FROM (
    SELECT k.id, d.hash, d.kind, d.path, d."user" AS user_name, d.producer_run_id,
           CASE WHEN e.type = 'ArtifactRegistered' THEN d.size_bytes END AS size_bytes,
           coalesce(d.metadata, '{}') AS metadata,
           CASE WHEN e.type = 'ArtifactRegistered' THEN e.recorded_at ELSE d.created_at END AS created_at,
           e.position,
           max(e.position) FILTER (WHERE e.type <> 'ArtifactsCollected') OVER artifact AS made_position,
           max(e.position) FILTER (WHERE e.type = 'ArtifactsCollected') OVER artifact AS collected_position,
           array_agg(e.recorded_at) FILTER (WHERE e.type = 'ArtifactsCollected') OVER artifact AS collected_times
    FROM labctl.events AS e
    CROSS JOIN LATERAL json_to_record(e.data) AS d (
        artifact_id text, artifact_ids json, hash text, kind text, path text, "user" text, producer_run_id text,
        size_bytes bigint, metadata jsonb, created_at timestamptz
    )
    CROSS JOIN LATERAL (
        SELECT d.artifact_id WHERE e.type <> 'ArtifactsCollected'
        UNION ALL
        SELECT c FROM json_array_elements_text(d.artifact_ids) AS c WHERE e.type = 'ArtifactsCollected'
    ) AS k (id)
    WHERE e.type IN ('ArtifactRegistered', 'ArtifactImported', 'ArtifactsCollected')
      AND e.position <= %(until)s
      AND e.position <> ALL (%(skip)s::bigint[])
    WINDOW artifact AS (PARTITION BY k.id ORDER BY e.position ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) AS artifacts
WHERE position = made_position

-- name: aliases_rebuild
-- aliases: put by AliasSet (now) and AliasImported (when the original set it), deleted by AliasRemoved.
SELECT user_name, alias, artifact_id, set_at
FROM (
    SELECT DISTINCT ON (d."user", d.alias)
           d."user" AS user_name, d.alias, d.artifact_id,
           CASE WHEN e.type = 'AliasImported' THEN d.set_at ELSE e.recorded_at END AS set_at,
           e.type
    FROM labctl.events AS e
    CROSS JOIN LATERAL json_to_record(e.data) AS d ("user" text, alias text, artifact_id text, set_at timestamptz)
    WHERE e.type IN ('AliasSet', 'AliasRemoved', 'AliasImported')
      AND e.position <= %(until)s
      AND e.position <> ALL (%(skip)s::bigint[])
    ORDER BY d."user", d.alias, e.position DESC
) AS last_write
WHERE type <> 'AliasRemoved'

-- name: run_outputs_rebuild
-- run_outputs: put by OutputLinked.
SELECT DISTINCT ON (d.run_id, d.artifact_id) d.run_id, d.artifact_id, d.role, d.path, d.step
FROM labctl.events AS e
CROSS JOIN LATERAL json_to_record(e.data) AS d (run_id text, artifact_id text, role text, path text, step integer)
WHERE e.type = 'OutputLinked'
  AND e.position <= %(until)s
  AND e.position <> ALL (%(skip)s::bigint[])
ORDER BY d.run_id, d.artifact_id, e.position DESC

-- name: run_inputs_rebuild
-- run_inputs: one row per input of RunSubmitted and RunImported (a role listed twice: the later one).
SELECT DISTINCT ON (d.run_id, i.role) d.run_id, i.role, i.type, i.path, i.artifact_id, i.alias, i.hash
FROM labctl.events AS e
CROSS JOIN LATERAL json_to_record(e.data) AS d (run_id text, inputs json)
CROSS JOIN LATERAL ROWS FROM (
    json_to_recordset(d.inputs) AS (role text, type text, path text, artifact_id text, alias text, hash text)
) WITH ORDINALITY AS i (role, type, path, artifact_id, alias, hash, n)
WHERE e.type IN ('RunSubmitted', 'RunImported')
  AND e.position <= %(until)s
  AND e.position <> ALL (%(skip)s::bigint[])
ORDER BY d.run_id, i.role, e.position DESC, i.n DESC

-- name: pipelines_rebuild
-- pipelines: put by PipelineCreated (running) and PipelineImported (as the original had it);
-- PipelineFinished ends the current row.
SELECT id, name, user_name,
       CASE WHEN finished_position > position THEN states[cardinality(states)] ELSE status END AS status,
       file_path, from_run,
       CASE WHEN finished_position > position THEN reasons[cardinality(reasons)] END AS reason,
       created_at,
       CASE WHEN finished_position > position THEN finished_times[cardinality(finished_times)] ELSE finished_at END
           AS finished_at
FROM (
    SELECT d.pipeline_id AS id, d.name, d."user" AS user_name,
           CASE WHEN e.type = 'PipelineCreated' THEN 'running' ELSE d.status END AS status,
           d.file_path,
           CASE WHEN e.type = 'PipelineCreated' THEN d.from_run END AS from_run,
           CASE WHEN e.type = 'PipelineCreated' THEN e.recorded_at ELSE d.created_at END AS created_at,
           CASE WHEN e.type = 'PipelineImported' THEN d.finished_at END AS finished_at,
           e.position,
           max(e.position) FILTER (WHERE e.type <> 'PipelineFinished') OVER pipeline AS made_position,
           max(e.position) FILTER (WHERE e.type = 'PipelineFinished') OVER pipeline AS finished_position,
           array_agg(d.state) FILTER (WHERE e.type = 'PipelineFinished') OVER pipeline AS states,
           array_agg(d.reason) FILTER (WHERE e.type = 'PipelineFinished') OVER pipeline AS reasons,
           array_agg(e.recorded_at) FILTER (WHERE e.type = 'PipelineFinished') OVER pipeline AS finished_times
    FROM labctl.events AS e
    CROSS JOIN LATERAL json_to_record(e.data) AS d (
        pipeline_id text, name text, "user" text, status text, file_path text, from_run text,
        created_at timestamptz, finished_at timestamptz, state text, reason text
    )
    WHERE e.type IN ('PipelineCreated', 'PipelineImported', 'PipelineFinished')
      AND e.position <= %(until)s
      AND e.position <> ALL (%(skip)s::bigint[])
    WINDOW pipeline AS (
        PARTITION BY d.pipeline_id ORDER BY e.position ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
    )
) AS pipelines
WHERE position = made_position

-- name: pipeline_stages_rebuild
-- pipeline_stages: one row per stage of PipelineCreated and PipelineImported, numbered from 0 in the
-- event's order (a name listed twice: the later one).
SELECT DISTINCT ON (d.pipeline_id, s.name)
       d.pipeline_id, s.name AS stage_name, (s.n - 1)::integer AS ordinal,
       coalesce(s.run_ids, '{}') AS run_ids, coalesce(s.parents, '{}') AS parents
FROM labctl.events AS e
CROSS JOIN LATERAL json_to_record(e.data) AS d (pipeline_id text, stages json)
CROSS JOIN LATERAL ROWS FROM (
    json_to_recordset(d.stages) AS (name text, run_ids text[], parents text[])
) WITH ORDINALITY AS s (name, run_ids, parents, n)
WHERE e.type IN ('PipelineCreated', 'PipelineImported')
  AND e.position <= %(until)s
  AND e.position <> ALL (%(skip)s::bigint[])
ORDER BY d.pipeline_id, s.name, e.position DESC, s.n DESC

-- name: sweeps_rebuild
-- sweeps: put by SweepCreated (running); SweepFinished ends the current row.
SELECT id, name, user_name, arg, start_index, end_index, throttle, run_ids, aggregate_run_id, pipeline_id,
       CASE WHEN finished_position > position THEN states[cardinality(states)] ELSE 'running' END AS status,
       created_at,
       CASE WHEN finished_position > position THEN finished_times[cardinality(finished_times)] END AS finished_at
FROM (
    SELECT d.sweep_id AS id, d.name, d."user" AS user_name, d.arg, d.start AS start_index, d."end" AS end_index,
           d.throttle, coalesce(d.run_ids, '{}') AS run_ids, d.aggregate_run_id, d.pipeline_id,
           e.recorded_at AS created_at, e.position,
           max(e.position) FILTER (WHERE e.type = 'SweepCreated') OVER sweep AS made_position,
           max(e.position) FILTER (WHERE e.type = 'SweepFinished') OVER sweep AS finished_position,
           array_agg(d.state) FILTER (WHERE e.type = 'SweepFinished') OVER sweep AS states,
           array_agg(e.recorded_at) FILTER (WHERE e.type = 'SweepFinished') OVER sweep AS finished_times
    FROM labctl.events AS e
    CROSS JOIN LATERAL json_to_record(e.data) AS d (
        sweep_id text, name text, "user" text, arg text, start integer, "end" integer, throttle integer,
        run_ids text[], aggregate_run_id text, pipeline_id text, state text
    )
    WHERE e.type IN ('SweepCreated', 'SweepFinished')
      AND e.position <= %(until)s
      AND e.position <> ALL (%(skip)s::bigint[])
    WINDOW sweep AS (PARTITION BY d.sweep_id ORDER BY e.position ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) AS sweeps
WHERE position = made_position

-- name: evals_rebuild
-- evals: put by EvalRequested (no metrics yet) and EvalImported (run "" when the original had not
-- claimed one; recorded at its last update if it has metrics); EvalRecorded fills the current row.
SELECT eval_key, policy, checkpoint_artifact_id, eval_recipe_hash, run_id, step,
       CASE WHEN recorded_position > position THEN recorded_metrics[cardinality(recorded_metrics)] ELSE metrics END
           AS metrics,
       requested_at,
       CASE WHEN recorded_position > position THEN recorded_times[cardinality(recorded_times)] ELSE recorded_at END
           AS recorded_at
FROM (
    SELECT d.eval_key, d.policy, d.checkpoint_artifact_id, d.eval_recipe_hash,
           CASE WHEN e.type = 'EvalImported' THEN coalesce(d.run_id, '') ELSE d.run_id END AS run_id,
           d.step,
           CASE WHEN e.type = 'EvalImported' THEN d.metrics END AS metrics,
           CASE WHEN e.type = 'EvalImported' THEN d.requested_at ELSE e.recorded_at END AS requested_at,
           CASE WHEN e.type = 'EvalImported' AND d.metrics IS NOT NULL THEN d.updated_at END AS recorded_at,
           e.position,
           max(e.position) FILTER (WHERE e.type <> 'EvalRecorded') OVER eval AS made_position,
           max(e.position) FILTER (WHERE e.type = 'EvalRecorded') OVER eval AS recorded_position,
           array_agg(d.metrics) FILTER (WHERE e.type = 'EvalRecorded') OVER eval AS recorded_metrics,
           array_agg(e.recorded_at) FILTER (WHERE e.type = 'EvalRecorded') OVER eval AS recorded_times
    FROM labctl.events AS e
    CROSS JOIN LATERAL json_to_record(e.data) AS d (
        eval_key text, policy text, checkpoint_artifact_id text, eval_recipe_hash text, run_id text,
        step integer, metrics jsonb, requested_at timestamptz, updated_at timestamptz
    )
    WHERE e.type IN ('EvalRequested', 'EvalImported', 'EvalRecorded')
      AND e.position <= %(until)s
      AND e.position <> ALL (%(skip)s::bigint[])
    WINDOW eval AS (PARTITION BY d.eval_key ORDER BY e.position ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) AS evals
WHERE position = made_position

-- name: metric_files_rebuild
-- metric_files: each MetricsLogged adds its points and skipped lines to its run's row and moves the
-- row to its version, end and time.
SELECT DISTINCT ON (d.run_id)
       d.run_id, e.version AS batches, d."end" AS byte_offset,
       sum(json_array_length(d.points)) OVER run AS points,
       sum(coalesce(d.skipped, 0)) OVER run AS skipped,
       e.recorded_at AS updated_at
FROM labctl.events AS e
CROSS JOIN LATERAL json_to_record(e.data) AS d (run_id text, "end" bigint, points json, skipped bigint)
WHERE e.type = 'MetricsLogged'
  AND e.position <= %(until)s
  AND e.position <> ALL (%(skip)s::bigint[])
WINDOW run AS (PARTITION BY d.run_id)
ORDER BY d.run_id, e.position DESC

-- name: imported_runs_rebuild
-- imported_runs: put by RunImported (no history yet); a later RunStatusImported sets the original's
-- status and, when it has one, the tracking link; each OriginalEventsImported about the run with
-- events adds them and sets the last one's id to the highest of its own. A tracking link is the
-- object the handler rebuilds from the decoded link: its known fields, without a null group.
SELECT run_id, recipe_hash, source_path, context, dependency_on,
       (SELECT jsonb_strip_nulls(jsonb_build_object(
                   'entity', t -> 'entity', 'project', t -> 'project', 'url', t -> 'url',
                   'source', t -> 'source', 'created_at', t -> 'created_at', 'group', t -> 'group'))
        FROM (SELECT coalesce(trackings[cardinality(trackings)], tracking) AS t) AS link
        WHERE t IS NOT NULL) AS tracking,
       coalesce(statuses[cardinality(statuses)], status) AS original_status,
       coalesce(history, 0)::integer AS original_events,
       last_ids[cardinality(last_ids)] AS last_event_id
FROM (
    SELECT ev.*,
           array_agg(ev.status) FILTER (WHERE ev.type = 'RunStatusImported' AND ev.position > ev.made_position)
               OVER run AS statuses,
           array_agg(ev.tracking) FILTER (
               WHERE ev.type = 'RunStatusImported' AND ev.tracking IS NOT NULL AND ev.position > ev.made_position
           ) OVER run AS trackings,
           sum(ev.events) FILTER (WHERE ev.events > 0 AND ev.position > ev.made_position) OVER run AS history,
           array_agg(ev.last_id) FILTER (WHERE ev.events > 0 AND ev.position > ev.made_position) OVER run AS last_ids
    FROM (
        SELECT e.type, e.position, d.run_id, d.recipe_hash, d.source_path, d.context, d.dependency_on, d.tracking,
               d.status,
               CASE WHEN e.type = 'OriginalEventsImported' THEN json_array_length(d.events) END AS events,
               (SELECT max(x.id) FROM json_to_recordset(d.events) AS x (id bigint)
                WHERE e.type = 'OriginalEventsImported') AS last_id,
               max(e.position) FILTER (WHERE e.type = 'RunImported') OVER (PARTITION BY d.run_id) AS made_position
        FROM labctl.events AS e
        CROSS JOIN LATERAL json_to_record(e.data) AS d (
            run_id text, recipe_hash text, source_path text, context jsonb, dependency_on jsonb, tracking jsonb,
            status text, events json
        )
        WHERE e.type IN ('RunImported', 'RunStatusImported', 'OriginalEventsImported')
          AND e.position <= %(until)s
          AND e.position <> ALL (%(skip)s::bigint[])
    ) AS ev
    WINDOW run AS (PARTITION BY ev.run_id ORDER BY ev.position ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) AS runs
WHERE position = made_position

-- name: users_rebuild
-- users: put by UserImported.
SELECT DISTINCT ON (d.name) d.name, d.pg_role, d.created_at
FROM labctl.events AS e
CROSS JOIN LATERAL json_to_record(e.data) AS d (name text, pg_role text, created_at timestamptz)
WHERE e.type = 'UserImported'
  AND e.position <= %(until)s
  AND e.position <> ALL (%(skip)s::bigint[])
ORDER BY d.name, e.position DESC

-- name: imported_evals_rebuild
-- imported_evals: put by EvalImported.
SELECT DISTINCT ON (d.eval_key) d.eval_key, d.state, d.attempts, d."user" AS user_name, d.updated_at
FROM labctl.events AS e
CROSS JOIN LATERAL json_to_record(e.data) AS d (
    eval_key text, state text, attempts integer, "user" text, updated_at timestamptz
)
WHERE e.type = 'EvalImported'
  AND e.position <= %(until)s
  AND e.position <> ALL (%(skip)s::bigint[])
ORDER BY d.eval_key, e.position DESC

-- name: imported_artifacts_rebuild
-- imported_artifacts: put by ArtifactImported.
SELECT DISTINCT ON (d.artifact_id) d.artifact_id, d.integrity, d.observed_hash, d.alias_segment
FROM labctl.events AS e
CROSS JOIN LATERAL json_to_record(e.data) AS d (
    artifact_id text, integrity text, observed_hash text, alias_segment text
)
WHERE e.type = 'ArtifactImported'
  AND e.position <= %(until)s
  AND e.position <> ALL (%(skip)s::bigint[])
ORDER BY d.artifact_id, e.position DESC
