-- Archives on object storage: the ledger learns the `upload` step (both files of an archive
-- uploaded to the store, read back from it and verified there). Only the CHECK of the step
-- column changes; the ledger is small, so validating the new CHECK is instant.
ALTER TABLE partwarden.partition_events DROP CONSTRAINT partition_events_step_check;
ALTER TABLE partwarden.partition_events ADD CONSTRAINT partition_events_step_check CHECK (step IN
    ('create', 'detach', 'finalize', 'archive', 'verify', 'ship', 'upload', 'drop', 'move', 'restore', 'pass'));
