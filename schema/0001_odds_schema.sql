-- The odds store's schema, exactly as the application's Alembic revision n8o7p0q1r4s5 creates
-- it (same names, types and indexes), so that a database made by either can be adopted by the
-- other. Partitions of market_odds_history are not created here: partwarden makes them from
-- the clock after the migrations have run.

CREATE TABLE public.market_odds_current (
    id bigserial NOT NULL,
    event_id integer NOT NULL,                   -- negative for competitor-only events; no FK
    bookmaker_slug varchar(20) NOT NULL,         -- 'betpawa', 'sportybet', 'bet9ja', ...
    betpawa_market_id varchar(50) NOT NULL,
    betpawa_market_name varchar(255) NOT NULL,
    line double precision,                       -- NULL for markets without a line
    handicap_type varchar(50),
    handicap_home double precision,
    handicap_away double precision,
    outcomes jsonb NOT NULL,                     -- [{"name":"1","odds":1.85,"is_active":true}, ...]
    market_groups jsonb,
    unavailable_at timestamptz,
    last_updated_at timestamptz NOT NULL DEFAULT now(),
    last_confirmed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_market_odds_current PRIMARY KEY (id)
);

-- The conflict target of every upsert: a NULL line and line 0 are the same market.
CREATE UNIQUE INDEX idx_moc_unique ON public.market_odds_current
    (event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, 0));
CREATE INDEX idx_moc_event ON public.market_odds_current (event_id);
CREATE INDEX idx_moc_bookmaker ON public.market_odds_current (bookmaker_slug);
CREATE INDEX idx_moc_event_bookmaker ON public.market_odds_current (event_id, bookmaker_slug);

CREATE TABLE public.market_odds_history (
    id bigserial NOT NULL,
    event_id integer NOT NULL,
    bookmaker_slug varchar(20) NOT NULL,
    betpawa_market_id varchar(50) NOT NULL,
    line double precision,
    outcomes jsonb NOT NULL,
    captured_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_market_odds_history PRIMARY KEY (id, captured_at)
) PARTITION BY RANGE (captured_at);

CREATE INDEX idx_moh_event_market_time ON public.market_odds_history
    (event_id, betpawa_market_id, captured_at DESC);
CREATE INDEX idx_moh_bookmaker_market ON public.market_odds_history
    (bookmaker_slug, betpawa_market_id);
