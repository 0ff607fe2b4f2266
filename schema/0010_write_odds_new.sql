-- write_odds_new: markets an OddsWriter has no version of, inserted with a plain INSERT, and
-- through write_odds_packed's upsert when any of them exists after all.
--
-- Why (measured server-side on odds_write_bench's fresh cycle, 60,000 new markets, 2 cores;
-- perf on the backend): INSERT ... ON CONFLICT first probes the unique index for a conflict
-- (ExecCheckIndexConstraints, 6.1% of the statement), takes a speculative-insertion lock
-- (2.2%) and confirms each insertion with a WAL record of its own (heap_finish_speculative,
-- 1.0%). A plain INSERT checks uniqueness once, while it inserts the index entry. On the same
-- 60,000 markets, four rounds each, this function took 0.79-0.85 s against 0.92-0.94 s for
-- write_odds_packed (and one slow round of 1.39 s).
--
-- The parameters are write_odds_packed's, in the same order and with the same types; every
-- market comes with its outcomes (an array) and p_xmin and p_ctid are empty. The markets are
-- inserted in the order of the arrays (the writer sorts them by key), so a concurrent writer
-- of the same new markets waits on them in that order, as with the upsert.
--
-- When any market exists (a unique_violation: another writer's, a writer restarted, a version
-- the writer forgot), nothing inserted so far stays (the INSERT runs in a subtransaction that
-- is rolled back) and the very same parameters, already parsed, go through
-- write_odds_packed: the result is then the upsert's, as if it had been called. The writer
-- sorts its batches by key, so a batch of existing markets fails at its first one; what a
-- batch of new markets with an existing one in it costs is at most its inserts done twice.
--
-- inserted = history_rows = the number of markets when they were all new; row_xmin and
-- row_ctid are in the arrays' order, as write_odds_packed's.

CREATE FUNCTION partwarden.write_odds_new(
    p_event_id integer[],
    p_bookmaker_slug text[],
    p_betpawa_market_id text[],
    p_betpawa_market_name text[],
    p_line double precision[],
    p_handicap_type text[],
    p_handicap_home double precision[],
    p_handicap_away double precision[],
    p_outcomes jsonb,
    p_market_groups jsonb,
    p_unavailable_at timestamptz[],
    p_scraped_at timestamptz[],
    p_xmin xid[],
    p_ctid tid[]
)
RETURNS TABLE (inserted bigint, changed bigint, unchanged bigint, history_rows bigint, stale bigint,
               cache_miss boolean, row_xmin xid[], row_ctid tid[])
LANGUAGE plpgsql
VOLATILE
SET jit = off
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    IF coalesce(cardinality(p_xmin), 0) <> 0 OR coalesce(cardinality(p_ctid), 0) <> 0 THEN
        RAISE EXCEPTION 'p_xmin and p_ctid must be empty (% and % elements)',
            cardinality(p_xmin), cardinality(p_ctid)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        WITH inserted AS (
            INSERT INTO public.market_odds_current AS c
                (event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line,
                 handicap_type, handicap_home, handicap_away, outcomes, market_groups,
                 unavailable_at, last_updated_at, last_confirmed_at)
            SELECT t.event_id, t.bookmaker_slug, t.betpawa_market_id, t.betpawa_market_name, t.line,
                   t.handicap_type, t.handicap_home, t.handicap_away, t.outcomes,
                   t.market_groups -> 0, t.unavailable_at, t.scraped_at, t.scraped_at
            FROM ROWS FROM (unnest(p_event_id), unnest(p_bookmaker_slug), unnest(p_betpawa_market_id),
                            unnest(p_betpawa_market_name), unnest(p_line), unnest(p_handicap_type),
                            unnest(p_handicap_home), unnest(p_handicap_away),
                            jsonb_array_elements(p_outcomes), jsonb_array_elements(p_market_groups),
                            unnest(p_unavailable_at), unnest(p_scraped_at))
                 WITH ORDINALITY AS t(event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name,
                                      line, handicap_type, handicap_home, handicap_away, outcomes,
                                      market_groups, unavailable_at, scraped_at, ord)
            ORDER BY t.ord
            RETURNING c.event_id, c.bookmaker_slug, c.betpawa_market_id, c.line, c.outcomes,
                      c.last_updated_at, c.xmin AS version_xmin, c.ctid AS version_ctid
        ),
        history AS (
            INSERT INTO public.market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
            SELECT event_id, bookmaker_slug, betpawa_market_id, line, outcomes, last_updated_at
            FROM inserted
            RETURNING 1
        )
        SELECT count(*) AS written,
               (SELECT count(*) FROM history) AS history_rows,
               count(*) FILTER (WHERE jsonb_typeof(outcomes) <> 'array') AS bad_inserts,
               array_agg(version_xmin) AS xmins,
               array_agg(version_ctid) AS ctids
        INTO r
        FROM inserted;
    EXCEPTION WHEN unique_violation THEN
        RETURN QUERY SELECT * FROM partwarden.write_odds_packed(
            p_event_id, p_bookmaker_slug, p_betpawa_market_id, p_betpawa_market_name, p_line,
            p_handicap_type, p_handicap_home, p_handicap_away, p_outcomes, p_market_groups,
            p_unavailable_at, p_scraped_at, p_xmin, p_ctid);
        RETURN;
    END;
    IF r.bad_inserts > 0 THEN
        RAISE EXCEPTION 'a market new to market_odds_current came without its outcomes array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT r.written, 0::bigint, 0::bigint, r.history_rows, 0::bigint, false,
                        r.xmins, r.ctids;
END
$fn$;
