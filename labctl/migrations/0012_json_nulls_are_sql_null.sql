-- Version 12: a read model's optional JSON value that is absent is SQL NULL. Before, the projections
-- wrote it as the JSON value null, so `metrics IS NOT NULL` (evals with results, in `eval ls` and the
-- dashboard) also counted evals without any; replay and the inline projection now write SQL NULL.
-- Rows written before are brought in line here rather than waiting for the next replay.

UPDATE live.evals SET metrics = NULL WHERE metrics = 'null'::jsonb;
UPDATE live.imported_runs SET dependency_on = NULL WHERE dependency_on = 'null'::jsonb;
UPDATE live.imported_runs SET tracking = NULL WHERE tracking = 'null'::jsonb;

INSERT INTO labctl.schema_version (version) VALUES (12);
