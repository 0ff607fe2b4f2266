-- The ledger of partwarden's partition steps. Every create, detach, archive, verify, ship
-- (archive_command), drop and move is a row: started when it begins, finished (or given an
-- error) when it ends. A pass reads it to finish what a crashed pass started, and --check reads
-- it for unfinished expiries and the age of the last successful pass.

CREATE TABLE partwarden.partition_events (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,                 -- the partitioned parent, schema.table
    partition_schema text,                    -- NULL for pass-level events
    partition_name text,
    lower_bound timestamptz,
    upper_bound timestamptz,
    step text NOT NULL CHECK (step IN
        ('create', 'detach', 'finalize', 'archive', 'verify', 'ship', 'drop', 'move', 'restore', 'pass')),
    rows bigint,
    archive_path text,
    checksum text,                            -- SHA-256 of the archive file, hex
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    error text
);

CREATE INDEX partition_events_partition_idx
    ON partwarden.partition_events (table_name, partition_schema, partition_name, id);
CREATE INDEX partition_events_step_idx
    ON partwarden.partition_events (step, finished_at);
