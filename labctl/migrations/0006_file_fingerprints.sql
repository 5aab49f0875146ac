-- Version 6: content hashes of external inputs and scripts, reused while their files'
-- sizes, mtimes and inodes are unchanged (an operational table, not a read model).

CREATE TABLE labctl.file_fingerprints (
    path          text        PRIMARY KEY,
    stat_digest   text        NOT NULL,
    content_hash  text        NOT NULL,
    files         bigint      NOT NULL,
    bytes         bigint      NOT NULL,
    hashed_at     timestamptz NOT NULL
);

INSERT INTO labctl.schema_version (version) VALUES (6);
