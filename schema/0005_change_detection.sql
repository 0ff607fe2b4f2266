-- write_odds, faster change detection: the same function as 0003's (see there for what it
-- does, in which order, and why it runs with jit = off), with one more step before the exact
-- comparison of a market's outcomes.
--
-- The exact comparison (the (name, odds, is_active) selections as a multiset: both sides
-- projected, sorted and aggregated) costs about 6.7 us a side, so 13 us for each market whose
-- outcomes are not byte-identical: 0.54 s of a 200,000-market scrape cycle where 20% changed,
-- a quarter of the server's work for it. Most such markets have new odds. The set of their
-- non-null odds values is a necessary condition of equality (equal selections have equal
-- odds), takes about 1 us a side through jsonpath, and when it differs the market changed:
-- the exact comparison then runs only for markets whose odds set is the same (reordered,
-- respelled, is_active or names changed). Missing and null odds are both left out of the
-- set, as the exact comparison counts them the same; values compare as jsonb, as there.
-- The test odds::what_counts_as_a_change lists the cases.

CREATE OR REPLACE FUNCTION partwarden.write_odds(
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
            -- Another set of (non-null) odds is a change for sure, and cheap to see.
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

