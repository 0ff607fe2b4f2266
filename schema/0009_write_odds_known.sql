-- write_odds_known: the markets an OddsWriter wrote before, updated by their row version
-- instead of by key.
--
-- Why (measured server-side on odds_write_bench's steady cycle: 60,000 markets, 48,003 of them
-- unchanged, 11,997 changed, 2 cores): write_odds_packed (0008) takes every market through
-- INSERT ... ON CONFLICT DO UPDATE: a probe of the four-column unique index, a lock of the row
-- (a WAL record of its own), then the update. An UPDATE that fetches each row by its ctid
-- does neither of the first two: this function took 0.39-0.50 s for the cycle, against
-- 0.53-0.66 s for write_odds_packed on the same markets, four runs each.
--
-- The parameters are write_odds_packed's, in the same order and with the same types, but
-- every market has a version: p_xmin[i] and p_ctid[i] are market i's row version as the
-- writer's last write of it left it, and element i of p_outcomes is either its outcomes (an
-- array: changed since that write, compared as write_odds compares them) or the number 0
-- ("unchanged since that write": the stored outcomes, market_groups and last_updated_at are
-- kept). Element i of p_market_groups is [groups] or [] (NULL) for a market sent with its
-- outcomes, ignored otherwise.
--
-- Market i is updated only when the row at p_ctid[i] is visible, has xmin = p_xmin[i], is
-- market i (event, bookmaker, market, line: a version is only ever used for the market whose
-- write returned it, and this makes a mix-up a miss, never a wrong row) and has an older
-- scrape than the new one. Why a matching (xmin, ctid) proves the stored JSON is the one the
-- writer wrote: see 0008. When any market is not updated (someone else's write, a rolled-back
-- transaction, a VACUUM FULL, a deleted market, a stale scrape), nothing of the batch is
-- written (the statement runs in a subtransaction that is rolled back) and cache_miss is true:
-- the writer then sends the batch through write_odds_packed with every market's JSON, which
-- tells stale markets apart and cannot miss.
--
-- Lock order: the rows are fetched and locked in the order of the arrays, which the writer
-- sorts by key: a nested loop, the arrays outside, a TID scan inside (one fetch per market).
-- The function turns hash and merge joins and the other scans off, so that no other plan is
-- possible (the planner would otherwise probe an index on the key columns the WHERE clause
-- also checks). A concurrent UPDATE of a row makes its new version fail the ctid test when
-- rechecked: a miss.
--
-- row_xmin and row_ctid are in the order the UPDATE processed the rows, the arrays' order;
-- were it ever another, a market would be given another market's version, and its next write
-- would miss on the key check, never write a wrong row.
--
-- The change detection is 0005's, unchanged; the history row and counts are write_odds's.
-- inserted and stale are always 0 (a known market exists, a stale one is a miss).

CREATE FUNCTION partwarden.write_odds_known(
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
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_indexscan = off
SET enable_bitmapscan = off
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    n bigint := coalesce(cardinality(p_event_id), 0);
    r record;
BEGIN
    IF coalesce(cardinality(p_xmin), 0) <> n OR coalesce(cardinality(p_ctid), 0) <> n THEN
        RAISE EXCEPTION 'p_xmin and p_ctid must have one element per market (% markets, % and %)',
            n, cardinality(p_xmin), cardinality(p_ctid)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        WITH updated AS (
            UPDATE public.market_odds_current AS c SET
                betpawa_market_name = t.betpawa_market_name,
                line = t.line,
                handicap_type = t.handicap_type,
                handicap_home = t.handicap_home,
                handicap_away = t.handicap_away,
                market_groups = CASE WHEN jsonb_typeof(t.outcomes) = 'number' THEN c.market_groups
                                     ELSE t.market_groups -> 0 END,
                unavailable_at = t.unavailable_at,
                outcomes = CASE WHEN jsonb_typeof(t.outcomes) = 'number' THEN c.outcomes
                                ELSE t.outcomes END,
                last_updated_at = CASE
                    -- Sent as unchanged, checked below: the very outcomes it has.
                    WHEN jsonb_typeof(t.outcomes) = 'number' THEN c.last_updated_at
                    -- From here on, 0005's comparison, unchanged.
                    WHEN c.outcomes = t.outcomes THEN c.last_updated_at
                    WHEN NOT (jsonb_path_query_array(c.outcomes, '$[*].odds ? (@ != null)')
                                 @> jsonb_path_query_array(t.outcomes, '$[*].odds ? (@ != null)')
                              AND jsonb_path_query_array(t.outcomes, '$[*].odds ? (@ != null)')
                                 @> jsonb_path_query_array(c.outcomes, '$[*].odds ? (@ != null)'))
                    THEN t.scraped_at
                    WHEN (SELECT coalesce(jsonb_agg(jsonb_build_array(e -> 'name', e -> 'odds', e -> 'is_active')
                                                    ORDER BY e ->> 'name', e ->> 'odds', e ->> 'is_active'), '[]'::jsonb)
                          FROM jsonb_array_elements(c.outcomes) AS e)
                       = (SELECT coalesce(jsonb_agg(jsonb_build_array(e -> 'name', e -> 'odds', e -> 'is_active')
                                                    ORDER BY e ->> 'name', e ->> 'odds', e ->> 'is_active'), '[]'::jsonb)
                          FROM jsonb_array_elements(t.outcomes) AS e)
                    THEN c.last_updated_at
                    ELSE t.scraped_at
                END,
                last_confirmed_at = t.scraped_at
            FROM ROWS FROM (unnest(p_ctid), unnest(p_xmin), unnest(p_event_id),
                            unnest(p_bookmaker_slug), unnest(p_betpawa_market_id),
                            unnest(p_betpawa_market_name), unnest(p_line), unnest(p_handicap_type),
                            unnest(p_handicap_home), unnest(p_handicap_away),
                            jsonb_array_elements(p_outcomes), jsonb_array_elements(p_market_groups),
                            unnest(p_unavailable_at), unnest(p_scraped_at))
                 WITH ORDINALITY AS t(version_ctid, version_xmin, event_id, bookmaker_slug,
                                      betpawa_market_id, betpawa_market_name, line, handicap_type,
                                      handicap_home, handicap_away, outcomes, market_groups,
                                      unavailable_at, scraped_at, ord)
            WHERE c.ctid = t.version_ctid
              AND c.xmin = t.version_xmin
              AND c.event_id = t.event_id
              AND c.bookmaker_slug = t.bookmaker_slug
              AND c.betpawa_market_id = t.betpawa_market_id
              AND coalesce(c.line, 0::double precision) = coalesce(t.line, 0::double precision)
              AND c.last_confirmed_at < t.scraped_at
            RETURNING c.event_id, c.bookmaker_slug, c.betpawa_market_id, c.line,
                      -- Only a changed market's outcomes are needed (for its history row).
                      CASE WHEN c.last_updated_at = c.last_confirmed_at THEN c.outcomes END AS outcomes,
                      c.last_updated_at, c.last_confirmed_at, c.xmin AS version_xmin,
                      c.ctid AS version_ctid
        ),
        history AS (
            INSERT INTO public.market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
            SELECT event_id, bookmaker_slug, betpawa_market_id, line, outcomes, last_updated_at
            FROM updated
            WHERE last_updated_at = last_confirmed_at
            RETURNING 1
        )
        SELECT count(*) FILTER (WHERE last_updated_at = last_confirmed_at) AS changed,
               count(*) FILTER (WHERE last_updated_at <> last_confirmed_at) AS unchanged,
               (SELECT count(*) FROM history) AS history_rows,
               count(*) AS written,
               array_agg(version_xmin) AS xmins,
               array_agg(version_ctid) AS ctids
        INTO r
        FROM updated;
        IF r.written <> n THEN
            -- Rolls back everything this block wrote.
            RAISE EXCEPTION 'cache miss' USING ERRCODE = 'PWC01';
        END IF;
    EXCEPTION WHEN SQLSTATE 'PWC01' THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, true,
                            NULL::xid[], NULL::tid[];
        RETURN;
    END;
    RETURN QUERY SELECT 0::bigint, r.changed, r.unchanged, r.history_rows, 0::bigint, false,
                        r.xmins, r.ctids;
END
$fn$;
