-- Queries of looking after the database: the schema's version (db.py), doctor and audit (maintenance.py).

-- name: schema_tables
-- Which schema_version table exists: labctl's own schema's, or public's (before version 4 labctl lived there).
SELECT to_regclass('labctl.schema_version') IS NOT NULL, to_regclass('public.schema_version') IS NOT NULL

-- name: schema_version
SELECT max(version) FROM labctl.schema_version

-- name: schema_version_before_4
SELECT max(version) FROM public.schema_version

-- name: original_registry_present
-- An original (Rust) labctl registry in schema public: its runs and its aliases table.
SELECT to_regclass('public.runs') IS NOT NULL AND to_regclass('public.artifact_aliases') IS NOT NULL

-- name: original_registry_runs
SELECT count(*) FROM public.runs

-- name: role_exists
SELECT 1 FROM pg_roles WHERE rolname = %(name)s

-- name: server_version
SELECT current_setting('server_version')

-- name: reactor_checkpoints
SELECT name, position FROM reactor_checkpoints ORDER BY name

-- name: live_agents
SELECT id, host, pid, heartbeat_at FROM agents WHERE stopped_at IS NULL ORDER BY started_at

-- name: notification_queue_usage
SELECT pg_notification_queue_usage()

-- name: checkpoints_past
-- Reactors that handled events past the log's end (``last``): events were removed from it.
SELECT name, position FROM reactor_checkpoints WHERE position > %(last)s

-- name: live_artifacts
SELECT id, hash, path FROM artifacts WHERE removed_at IS NULL ORDER BY id

-- name: schema_exists
SELECT to_regnamespace(%(name)s) IS NOT NULL
