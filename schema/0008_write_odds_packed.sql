-- write_odds_packed: the same upsert and change-only history as write_odds (0003, with 0005's
-- change detection; see there for what it does, in which order, and why jit is off), with
-- the JSON of a batch in one value and unchanged markets sent without theirs.
--
-- Why (measured with odds_write_bench, 60,000 markets in batches of 5,000, 2 cores):
-- * a jsonb[] parameter costs the server a jsonb_recv per element: 0.31-0.40 s for 60,000
--   outcomes, 0.03-0.13 s for 60,000 market_groups of a few bytes. The same values as one
--   jsonb array (one parse) cost 0.14-0.24 s and 0.01 s; jsonb_array_elements then hands out
--   each element as a copy of its binary form, no second parse;
-- * a writer that keeps what it wrote (partwarden::odds::OddsWriter) does not send the JSON
--   of a market whose outcomes and market_groups are byte for byte the ones it wrote, as
--   long as the stored row is still the version it wrote: it sends the version's (xmin,
--   ctid) instead, and this function checks them on the locked row.
--
-- The parameters are write_odds's, but:
--   p_outcomes       one jsonb array, element i for market i: its outcomes (an array), or the
--                    number k: "unchanged since the row version (p_xmin[k], p_ctid[k])";
--   p_market_groups  one jsonb array, element i: [groups] for market_groups = groups, [] for
--                    NULL; ignored for a market sent as a number;
--   p_xmin, p_ctid   the row versions the numbers refer to (empty when none is).
--
-- A market sent as a number k is updated only when the current, locked row (ON CONFLICT's
-- row) has xmin = p_xmin[k] and ctid = p_ctid[k]. A row version is identified by the two:
-- its ctid is unique among live versions, a version made later at the same ctid has another
-- xmin (the slot of a version is reused only after the version is dead and pruned, which
-- needs its deleting transaction to have ended), and the writer forgets versions after an
-- hour, long before xids wrap around. So the stored outcomes and market_groups are exactly the
-- ones the writer sent (or kept) in that version: the market is unchanged, as write_odds
-- would have found comparing them. The row gets the new scalar columns and last_confirmed_at,
-- keeps outcomes, market_groups and last_updated_at, and gets no history row.
--
-- When any such market is not updated that way (another writer, mark_unavailable, an UPDATE
-- of the application, a rolled-back transaction or a VACUUM FULL made another version; the
-- market is gone; or its scrape is stale), nothing of the batch is written (the write runs in
-- a subtransaction that is rolled back) and cache_miss is true: the writer then sends the
-- batch again with every market's JSON, which cannot miss. The check runs under the row lock
-- the update takes, in the batch's key order, so the deadlock freedom of write_odds holds.
--
-- row_xmin and row_ctid give the version each market has now, in the batch's order, when
-- every market was written (no stale one); NULL otherwise (the writer then forgets the batch).
-- They are read in the order INSERT ... SELECT ... ORDER BY ord processed the rows. Were that
-- order ever different, a market would be given another market's version, which its own row
-- never has: the next write of it would miss and be resent, never be written wrong.

CREATE FUNCTION partwarden.write_odds_packed_apply(
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
               bad_inserts bigint, row_xmin xid[], row_ctid tid[])
LANGUAGE plpgsql
VOLATILE
SET jit = off
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
BEGIN
RETURN QUERY
WITH upserted AS (
    INSERT INTO public.market_odds_current AS c
        (event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line, handicap_type,
         handicap_home, handicap_away, outcomes, market_groups, unavailable_at, last_updated_at,
         last_confirmed_at)
    SELECT t.event_id, t.bookmaker_slug, t.betpawa_market_id, t.betpawa_market_name, t.line,
           t.handicap_type, t.handicap_home, t.handicap_away, t.outcomes, t.market_groups -> 0,
           t.unavailable_at, t.scraped_at, t.scraped_at
    FROM ROWS FROM (unnest(p_event_id), unnest(p_bookmaker_slug), unnest(p_betpawa_market_id),
                    unnest(p_betpawa_market_name), unnest(p_line), unnest(p_handicap_type),
                    unnest(p_handicap_home), unnest(p_handicap_away),
                    jsonb_array_elements(p_outcomes), jsonb_array_elements(p_market_groups),
                    unnest(p_unavailable_at), unnest(p_scraped_at))
         WITH ORDINALITY AS t(event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line,
                              handicap_type, handicap_home, handicap_away, outcomes, market_groups,
                              unavailable_at, scraped_at, ord)
    ORDER BY t.ord
    ON CONFLICT (event_id, bookmaker_slug, betpawa_market_id, (coalesce(line, 0::double precision)))
    DO UPDATE SET
        betpawa_market_name = EXCLUDED.betpawa_market_name,
        line = EXCLUDED.line,
        handicap_type = EXCLUDED.handicap_type,
        handicap_home = EXCLUDED.handicap_home,
        handicap_away = EXCLUDED.handicap_away,
        market_groups = CASE WHEN jsonb_typeof(EXCLUDED.outcomes) = 'number' THEN c.market_groups
                             ELSE EXCLUDED.market_groups END,
        unavailable_at = EXCLUDED.unavailable_at,
        outcomes = CASE WHEN jsonb_typeof(EXCLUDED.outcomes) = 'number' THEN c.outcomes
                        ELSE EXCLUDED.outcomes END,
        last_updated_at = CASE
            -- Sent as a version number, checked below: the very outcomes it has.
            WHEN jsonb_typeof(EXCLUDED.outcomes) = 'number' THEN c.last_updated_at
            -- From here on, 0005's comparison, unchanged.
            WHEN c.outcomes = EXCLUDED.outcomes THEN c.last_updated_at
            WHEN NOT (jsonb_path_query_array(c.outcomes, '$[*].odds ? (@ != null)')
                         @> jsonb_path_query_array(EXCLUDED.outcomes, '$[*].odds ? (@ != null)')
                      AND jsonb_path_query_array(EXCLUDED.outcomes, '$[*].odds ? (@ != null)')
                         @> jsonb_path_query_array(c.outcomes, '$[*].odds ? (@ != null)'))
            THEN EXCLUDED.last_updated_at
            WHEN (SELECT coalesce(jsonb_agg(jsonb_build_array(e -> 'name', e -> 'odds', e -> 'is_active')
                                            ORDER BY e ->> 'name', e ->> 'odds', e ->> 'is_active'), '[]'::jsonb)
                  FROM jsonb_array_elements(c.outcomes) AS e)
               = (SELECT coalesce(jsonb_agg(jsonb_build_array(e -> 'name', e -> 'odds', e -> 'is_active')
                                            ORDER BY e ->> 'name', e ->> 'odds', e ->> 'is_active'), '[]'::jsonb)
                  FROM jsonb_array_elements(EXCLUDED.outcomes) AS e)
            THEN c.last_updated_at
            ELSE EXCLUDED.last_updated_at
        END,
        last_confirmed_at = EXCLUDED.last_confirmed_at
    WHERE c.last_confirmed_at < EXCLUDED.last_confirmed_at
      AND (jsonb_typeof(EXCLUDED.outcomes) <> 'number'
           OR (c.xmin = p_xmin[(EXCLUDED.outcomes)::integer]
               AND c.ctid = p_ctid[(EXCLUDED.outcomes)::integer]))
    RETURNING c.event_id, c.bookmaker_slug, c.betpawa_market_id, c.line, c.outcomes, c.last_updated_at,
              c.last_confirmed_at, (c.xmax = 0) AS is_new, c.xmin AS version_xmin, c.ctid AS version_ctid
),
history AS (
    INSERT INTO public.market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
    SELECT event_id, bookmaker_slug, betpawa_market_id, line, outcomes, last_updated_at
    FROM upserted
    WHERE last_updated_at = last_confirmed_at
    RETURNING 1
),
counted AS (
    SELECT count(*) FILTER (WHERE is_new) AS inserted,
           count(*) FILTER (WHERE NOT is_new AND last_updated_at = last_confirmed_at) AS changed,
           count(*) FILTER (WHERE last_updated_at <> last_confirmed_at) AS unchanged,
           count(*) AS written,
           -- A market new to the table must come with its outcomes.
           count(*) FILTER (WHERE is_new AND jsonb_typeof(outcomes) <> 'array') AS bad_inserts,
           array_agg(version_xmin) AS xmins,
           array_agg(version_ctid) AS ctids
    FROM upserted
)
SELECT counted.inserted, counted.changed, counted.unchanged, (SELECT count(*) FROM history),
       cardinality(p_event_id) - counted.written, counted.bad_inserts,
       CASE WHEN counted.written = cardinality(p_event_id) THEN counted.xmins END,
       CASE WHEN counted.written = cardinality(p_event_id) THEN counted.ctids END
FROM counted;
END
$fn$;

CREATE FUNCTION partwarden.write_odds_packed(
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
DECLARE
    r record;
BEGIN
    IF cardinality(p_xmin) IS DISTINCT FROM cardinality(p_ctid) THEN
        RAISE EXCEPTION 'p_xmin has % elements and p_ctid %', cardinality(p_xmin), cardinality(p_ctid)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(cardinality(p_xmin), 0) = 0 THEN
        -- Every market comes with its JSON: nothing can miss, no subtransaction.
        SELECT * INTO r FROM partwarden.write_odds_packed_apply(
            p_event_id, p_bookmaker_slug, p_betpawa_market_id, p_betpawa_market_name, p_line,
            p_handicap_type, p_handicap_home, p_handicap_away, p_outcomes, p_market_groups,
            p_unavailable_at, p_scraped_at, p_xmin, p_ctid);
        IF r.bad_inserts > 0 THEN
            RAISE EXCEPTION 'a market new to market_odds_current came without its outcomes array'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RETURN QUERY SELECT r.inserted, r.changed, r.unchanged, r.history_rows, r.stale, false,
                            r.row_xmin, r.row_ctid;
        RETURN;
    END IF;
    BEGIN
        SELECT * INTO r FROM partwarden.write_odds_packed_apply(
            p_event_id, p_bookmaker_slug, p_betpawa_market_id, p_betpawa_market_name, p_line,
            p_handicap_type, p_handicap_home, p_handicap_away, p_outcomes, p_market_groups,
            p_unavailable_at, p_scraped_at, p_xmin, p_ctid);
        IF r.bad_inserts > 0 OR r.stale > 0 THEN
            -- Rolls back everything this block wrote.
            RAISE EXCEPTION 'cache miss' USING ERRCODE = 'PWC01';
        END IF;
    EXCEPTION WHEN SQLSTATE 'PWC01' THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, true,
                            NULL::xid[], NULL::tid[];
        RETURN;
    END;
    RETURN QUERY SELECT r.inserted, r.changed, r.unchanged, r.history_rows, r.stale, false,
                        r.row_xmin, r.row_ctid;
END
$fn$;
