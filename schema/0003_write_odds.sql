-- The odds write path, as one function so that a scrape batch is one statement and one round
-- trip: partwarden::odds::write_batch calls it with typed arrays, one element per market, each
-- key once and sorted by key (the client does that, see odds::prepare).
--
-- It runs with jit = off: the statement's estimated cost grows with the batch and crosses
-- jit_above_cost, and JIT compilation then costs more than the whole batch (measured: 600 ms of
-- compilation for a 5,000-row batch that executes in 60 ms).
--
-- One pass, in the batch's key order (so concurrent writers with overlapping keys take their
-- row locks in one global order and never deadlock):
--   1. INSERT ... ON CONFLICT on (event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, 0)):
--      new markets are inserted; an existing market is updated only when the batch's scrape is
--      newer than its last_confirmed_at (an older or replayed scrape is left alone: stale);
--   2. in the update, the locked, current row's outcomes are compared with the new ones as the
--      application does: the same selections with the same odds and is_active, in any order
--      (byte-identical outcomes skip the comparison). Changed: last_updated_at = the scrape
--      instant. Unchanged: last_updated_at stays. last_confirmed_at moves in both cases;
--   3. so a returned row changed (or is new) exactly when last_updated_at = last_confirmed_at,
--      and each of those gets a market_odds_history row captured at the scrape instant.

CREATE FUNCTION partwarden.write_odds(
    p_event_id integer[],
    p_bookmaker_slug text[],
    p_betpawa_market_id text[],
    p_betpawa_market_name text[],
    p_line double precision[],
    p_handicap_type text[],
    p_handicap_home double precision[],
    p_handicap_away double precision[],
    p_outcomes jsonb[],
    p_market_groups jsonb[],
    p_unavailable_at timestamptz[],
    p_scraped_at timestamptz[]
)
RETURNS TABLE (inserted bigint, changed bigint, unchanged bigint, history_rows bigint, stale bigint)
LANGUAGE sql
VOLATILE
SET jit = off
SET search_path = pg_catalog, pg_temp
AS $fn$
WITH upserted AS (
    INSERT INTO public.market_odds_current AS c
        (event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line, handicap_type,
         handicap_home, handicap_away, outcomes, market_groups, unavailable_at, last_updated_at,
         last_confirmed_at)
    SELECT event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line, handicap_type,
           handicap_home, handicap_away, outcomes, market_groups, unavailable_at, scraped_at, scraped_at
    FROM unnest(p_event_id, p_bookmaker_slug, p_betpawa_market_id, p_betpawa_market_name, p_line,
                p_handicap_type, p_handicap_home, p_handicap_away, p_outcomes, p_market_groups,
                p_unavailable_at, p_scraped_at)
         WITH ORDINALITY AS t(event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line,
                              handicap_type, handicap_home, handicap_away, outcomes, market_groups,
                              unavailable_at, scraped_at, ord)
    ORDER BY ord
    ON CONFLICT (event_id, bookmaker_slug, betpawa_market_id, (coalesce(line, 0::double precision)))
    DO UPDATE SET
        betpawa_market_name = EXCLUDED.betpawa_market_name,
        line = EXCLUDED.line,
        handicap_type = EXCLUDED.handicap_type,
        handicap_home = EXCLUDED.handicap_home,
        handicap_away = EXCLUDED.handicap_away,
        market_groups = EXCLUDED.market_groups,
        unavailable_at = EXCLUDED.unavailable_at,
        -- The latest spelling of the outcomes is kept either way; what counts as a change is
        -- decided on the (name, odds, is_active) selections, in any order. Identical bytes,
        -- the common case, skip the comparison.
        outcomes = EXCLUDED.outcomes,
        last_updated_at = CASE
            WHEN c.outcomes = EXCLUDED.outcomes THEN c.last_updated_at
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
    RETURNING c.event_id, c.bookmaker_slug, c.betpawa_market_id, c.line, c.outcomes, c.last_updated_at,
              c.last_confirmed_at, (c.xmax = 0) AS is_new
),
history AS (
    INSERT INTO public.market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
    SELECT event_id, bookmaker_slug, betpawa_market_id, line, outcomes, last_updated_at
    FROM upserted
    WHERE last_updated_at = last_confirmed_at
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted WHERE is_new),
       (SELECT count(*) FROM upserted WHERE NOT is_new AND last_updated_at = last_confirmed_at),
       (SELECT count(*) FROM upserted WHERE last_updated_at <> last_confirmed_at),
       (SELECT count(*) FROM history),
       cardinality(p_event_id) - (SELECT count(*) FROM upserted)
$fn$;

COMMENT ON FUNCTION partwarden.write_odds IS
    'One scrape batch of odds: upsert market_odds_current, change-only market_odds_history. Called by partwarden::odds::write_batch.';


-- Markets that disappeared: sets unavailable_at on the available ones among the keys, in the
-- batch's key order (the same global order as write_odds, so the two never deadlock), one
-- lookup in the unique index each. A market already marked keeps its first instant.
CREATE FUNCTION partwarden.mark_unavailable(
    p_event_id integer[],
    p_bookmaker_slug text[],
    p_betpawa_market_id text[],
    p_line double precision[],
    p_at timestamptz
)
RETURNS bigint
LANGUAGE sql
VOLATILE
SET jit = off
SET search_path = pg_catalog, pg_temp
AS $fn$
WITH target AS (
    SELECT c.id
    FROM unnest(p_event_id, p_bookmaker_slug, p_betpawa_market_id, p_line)
         WITH ORDINALITY AS k(event_id, bookmaker_slug, betpawa_market_id, line, ord)
    CROSS JOIN LATERAL (
        SELECT c.id FROM public.market_odds_current c
        WHERE c.event_id = k.event_id AND c.bookmaker_slug = k.bookmaker_slug
          AND c.betpawa_market_id = k.betpawa_market_id AND coalesce(c.line, 0) = coalesce(k.line, 0)
          AND c.unavailable_at IS NULL
        FOR UPDATE
    ) c
),
marked AS (
    UPDATE public.market_odds_current c SET unavailable_at = p_at
    FROM target WHERE c.id = target.id
    RETURNING 1
)
SELECT count(*) FROM marked
$fn$;
