-- The application's own migration creates market_odds_history with an unnamed
-- `PRIMARY KEY (id, captured_at)`, which PostgreSQL names market_odds_history_pkey; 0001 named it
-- pk_market_odds_history. After this, a database partwarden bootstrapped from nothing has the
-- application's schema name for name. A database whose tables the application made (adopted)
-- already has that name, and is left alone. The partitions' own constraints keep their names.
--
-- RENAME CONSTRAINT takes ACCESS EXCLUSIVE on the parent for an instant (no scan, no rewrite);
-- like every migration it runs under lock_timeout and is retried.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'public.market_odds_history'::regclass
          AND conname = 'pk_market_odds_history'
    ) THEN
        ALTER TABLE public.market_odds_history
            RENAME CONSTRAINT pk_market_odds_history TO market_odds_history_pkey;
    END IF;
END
$$;
