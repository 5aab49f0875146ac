-- Version 8: the runs page pages at any depth by reading about its own rows. It filters on and
-- sorts by one column (ties newest first, then by id); each index serves that column's filter and
-- its sort. Before, ties on created_at (a sweep or a batch submitted in one transaction) and every
-- sort but creation were sorted in memory, and a user's or a state's page scanned everyone's runs.

DROP INDEX live.runs_created_at_idx;
DROP INDEX live.runs_status_idx;
DROP INDEX live.runs_user_created_idx;
CREATE INDEX runs_created_at_idx ON live.runs (created_at, id);
CREATE INDEX runs_status_idx ON live.runs (status, created_at, id);
CREATE INDEX runs_user_created_idx ON live.runs (user_name, created_at, id);
CREATE INDEX runs_name_created_idx ON live.runs (name, created_at, id);
CREATE INDEX runs_duration_idx ON live.runs
    ((coalesce(date_part('epoch', finished_at - coalesce(started_at, created_at)), 'Infinity'::float8)), created_at, id);

INSERT INTO labctl.schema_version (version) VALUES (8);
