-- Queries of artifacts and aliases: reading them (artifact_queries.py, lookup.py, lineage.py), aliases
-- (aliases.py), resolving inputs and linking outputs (submit.py, linking.py, registration.py) and gc (gc.py).
-- Optional filters are nullable parameters (``%(x)s::text IS NULL OR col = %(x)s``), never SQL fragments.

-- name: artifacts
-- Artifacts with their aliases (``user/alias``), oldest first: the newest ``limit`` (all when NULL) of those
-- with these ``ids``, of ``kind``, of ``user`` (each unless NULL), collected ones only if ``include_removed``.
SELECT * FROM (
    SELECT a.id, a.hash, a.kind, a.path, a.user_name AS user, a.producer_run_id, a.size_bytes, a.metadata,
           a.created_at, a.removed_at,
           coalesce((SELECT array_agg(al.user_name || '/' || al.alias ORDER BY al.user_name, al.alias)
                     FROM aliases al WHERE al.artifact_id = a.id), '{}') AS aliases
    FROM artifacts a
    WHERE (%(ids)s::text[] IS NULL OR a.id = ANY (%(ids)s))
      AND (%(kind)s::text IS NULL OR a.kind = %(kind)s)
      AND (%(user)s::text IS NULL OR a.user_name = %(user)s)
      AND (%(include_removed)s::boolean OR a.removed_at IS NULL)
    ORDER BY a.created_at DESC, a.id DESC
    LIMIT %(limit)s
) t
ORDER BY created_at, id

-- name: artifact_ids_from
-- Up to 6 artifact ids starting with ``prefix`` (``end`` is the prefix followed by the highest character).
SELECT id, removed_at FROM artifacts WHERE id >= %(prefix)s AND id < %(end)s ORDER BY id LIMIT 6

-- name: consumers
-- The runs that read an artifact.
SELECT DISTINCT run_id FROM run_inputs WHERE artifact_id = %(id)s ORDER BY run_id

-- name: artifact_kinds
SELECT DISTINCT kind FROM artifacts

-- name: ids_from
-- Up to 6 ids of {table} starting with ``prefix`` ({table} is one of labctl's, filled in with sql.Identifier).
SELECT id FROM {table} WHERE id >= %(prefix)s AND id < %(end)s ORDER BY id LIMIT 6

-- name: alias_target
-- The artifact ``user``'s alias names.
SELECT artifact_id FROM aliases WHERE user_name = %(user)s AND alias = %(alias)s

-- name: latest_alias_target
-- The artifact an alias names in the namespace shared by every user: the one set last under that name wins.
SELECT artifact_id FROM aliases WHERE alias = %(alias)s ORDER BY set_at DESC, user_name LIMIT 1

-- name: alias_artifacts
-- The kind and path of the artifact ``user``'s alias names.
SELECT a.kind, a.path
FROM aliases al JOIN artifacts a ON a.id = al.artifact_id
WHERE al.user_name = %(user)s AND al.alias = %(alias)s

-- name: aliases_list
-- Aliases (only ``user``'s unless NULL) with their artifact's kind and path.
SELECT al.user_name AS user, al.alias, al.artifact_id, a.kind, a.path, al.set_at
FROM aliases al JOIN artifacts a ON a.id = al.artifact_id
WHERE %(user)s::text IS NULL OR al.user_name = %(user)s
ORDER BY al.user_name, al.alias

-- name: aliases_of_user
-- Which of these aliases of ``user`` exist, and the artifact each names.
SELECT alias, artifact_id FROM aliases WHERE user_name = %(user)s AND alias = ANY (%(aliases)s)

-- name: latest_alias_of
-- The alias last set on an artifact (by anyone).
SELECT alias FROM aliases WHERE artifact_id = %(id)s ORDER BY set_at DESC, user_name LIMIT 1

-- name: lineage_runs
SELECT id, name, status, user_name FROM runs WHERE id = ANY (%(ids)s)

-- name: lineage_upstream
-- Each step walks one edge: artifact <- its producer run <- that run's inputs. UNION and the depth bound stop
-- cycles.
WITH RECURSIVE walk(type, id, parent_type, parent_id, depth) AS (
    SELECT %(type)s::text, %(id)s::text, NULL::text, NULL::text, 0
  UNION
    SELECT step.type, step.id, w.type, w.id, w.depth + 1
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT 'run'::text AS type, a.producer_run_id AS id FROM artifacts a
        WHERE w.type = 'artifact' AND a.id = w.id AND a.producer_run_id IS NOT NULL
      UNION ALL
        SELECT CASE WHEN i.artifact_id IS NULL THEN 'path' ELSE 'artifact' END, coalesce(i.artifact_id, i.path)
        FROM run_inputs i WHERE w.type = 'run' AND i.run_id = w.id AND (i.artifact_id IS NOT NULL OR i.type <> 'stage')
      UNION ALL
        -- a stage input that is a folder of the parent stage's outputs (a sweep's points): those artifacts
        SELECT 'artifact', o.artifact_id
        FROM run_inputs i
        JOIN runs me ON me.id = i.run_id
        JOIN runs p ON p.pipeline_id = me.pipeline_id AND p.stage_name = me.recipe->'inputs'->i.role->>'stage'
        JOIN run_outputs o ON o.run_id = p.id AND o.role = me.recipe->'inputs'->i.role->>'role'
        WHERE w.type = 'run' AND i.run_id = w.id AND i.artifact_id IS NULL AND i.type = 'stage'
    ) step
    WHERE w.depth < %(depth)s
)
SELECT DISTINCT parent_type, parent_id, type, id FROM walk WHERE depth > 0

-- name: lineage_downstream
-- Each step walks one edge: artifact -> runs that read it -> what they wrote. UNION and the depth bound stop
-- cycles.
WITH RECURSIVE walk(type, id, parent_type, parent_id, depth) AS (
    SELECT %(type)s::text, %(id)s::text, NULL::text, NULL::text, 0
  UNION
    SELECT step.type, step.id, w.type, w.id, w.depth + 1
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT 'run'::text AS type, i.run_id AS id FROM run_inputs i
        WHERE w.type = 'artifact' AND i.artifact_id = w.id
      UNION ALL
        -- runs that read it inside a folder of their parent stage's outputs (a sweep's aggregate)
        SELECT 'run', me.id
        FROM run_outputs o
        JOIN runs p ON p.id = o.run_id AND p.pipeline_id IS NOT NULL
        JOIN runs me ON me.pipeline_id = p.pipeline_id
        JOIN run_inputs i ON i.run_id = me.id AND i.artifact_id IS NULL AND i.type = 'stage'
        WHERE w.type = 'artifact' AND o.artifact_id = w.id
          AND me.recipe->'inputs'->i.role->>'stage' = p.stage_name
          AND me.recipe->'inputs'->i.role->>'role' = o.role
      UNION ALL
        SELECT 'artifact', o.artifact_id FROM run_outputs o WHERE w.type = 'run' AND o.run_id = w.id
    ) step
    WHERE w.depth < %(depth)s
)
SELECT DISTINCT parent_type, parent_id, type, id FROM walk WHERE depth > 0

-- name: live_artifacts_from
-- Up to 2 live artifacts whose id starts with ``pattern`` (a LIKE pattern), with their checkpoint step.
SELECT id, path, hash, (metadata ->> 'step')::bigint FROM artifacts
WHERE id LIKE %(pattern)s AND removed_at IS NULL ORDER BY id LIMIT 2

-- name: live_artifact
-- A live artifact, with ``alias`` (how the input named it) beside it.
SELECT id, path, hash, %(alias)s::text FROM artifacts WHERE id = %(id)s AND removed_at IS NULL

-- name: producer_outputs
-- A run's outputs, whether each was collected.
SELECT o.role, o.artifact_id, o.path, o.step, a.removed_at
FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id
WHERE o.run_id = %(run_id)s
ORDER BY o.role, o.step NULLS FIRST

-- name: registered_artifacts
-- Of these artifact ids, those registered already: who produced each, and whether its bytes are still there.
SELECT id, producer_run_id, removed_at IS NULL FROM artifacts WHERE id = ANY (%(ids)s)

-- name: collectable
-- What gc may delete: bytes labctl moved into <root>/_objects/ for a run's output, still there, created before
-- the cutoff (only ``user``'s unless NULL), with no alias, read by no unfinished run, and not the output of a
-- pipeline that is still going.
SELECT a.id AS artifact_id, a.hash, a.kind, a.path, a.producer_run_id, a.created_at
FROM artifacts a
WHERE a.removed_at IS NULL
  AND a.created_at < %(cutoff)s
  AND (%(user)s::text IS NULL OR a.user_name = %(user)s)
  AND a.kind <> %(external)s
  AND a.producer_run_id IS NOT NULL
  AND coalesce(a.metadata->>'external', 'false') <> 'true'
  AND NOT EXISTS (SELECT 1 FROM aliases al WHERE al.artifact_id = a.id)
  AND NOT EXISTS (
      SELECT 1 FROM run_inputs i JOIN runs r ON r.id = i.run_id
      WHERE i.artifact_id = a.id AND r.status <> ALL (%(terminal)s::text[]))
  AND NOT EXISTS (
      SELECT 1 FROM run_outputs o JOIN runs p ON p.id = o.run_id JOIN runs other ON other.pipeline_id = p.pipeline_id
      WHERE o.artifact_id = a.id AND p.pipeline_id IS NOT NULL AND other.status <> ALL (%(terminal)s::text[]))
ORDER BY a.created_at, a.id

-- name: cache_keys_of_producers
-- The cache keys of these runs and of the runs that wrote these artifacts.
SELECT DISTINCT r.cache_key FROM runs r
WHERE r.cache_key IS NOT NULL
  AND (r.id = ANY (%(producers)s)
       OR r.id IN (SELECT o.run_id FROM run_outputs o WHERE o.artifact_id = ANY (%(ids)s)))
ORDER BY 1

-- name: artifacts_registered_by
-- How many artifacts these runs registered.
SELECT count(*) FROM artifacts WHERE producer_run_id = ANY (%(run_ids)s)

-- name: stored_fingerprint
-- The content hash stored for a path, while its stat digest is still the one it was hashed at.
SELECT content_hash FROM file_fingerprints WHERE path = %(path)s AND stat_digest = %(stat_digest)s

-- name: store_fingerprint
INSERT INTO file_fingerprints (path, stat_digest, content_hash, files, bytes, hashed_at)
VALUES (%(path)s, %(stat_digest)s, %(content_hash)s, %(files)s, %(bytes)s, now())
ON CONFLICT (path) DO UPDATE
SET stat_digest = EXCLUDED.stat_digest, content_hash = EXCLUDED.content_hash, files = EXCLUDED.files,
    bytes = EXCLUDED.bytes, hashed_at = now()
