-- Draining a DEFAULT partition (src/drain.rs): one row per table whose DEFAULT partition is
-- being drained into period partitions. The drain's other objects (the staging table, the
-- change log, the capture trigger) are named after the parent's oid; this row says how far the
-- copy has gone, so that a pass killed at any instant is finished by the next one.
CREATE TABLE partwarden.default_drains (
    parent oid PRIMARY KEY,
    default_partition oid NOT NULL,
    blocks bigint NOT NULL CHECK (blocks >= 0),
    next_block bigint NOT NULL DEFAULT 0 CHECK (next_block >= 0),
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The swap's guard: it refuses to truncate a DEFAULT partition whose every block has not been
-- copied (the drain's row says how far the copy went, in the swap's own transaction).
CREATE FUNCTION partwarden.drain_assert_copied(p_parent oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM partwarden.default_drains
                   WHERE parent = p_parent AND next_block >= blocks) THEN
        RAISE EXCEPTION 'the DEFAULT partition of % is not copied whole yet', p_parent::regclass
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END $$;
