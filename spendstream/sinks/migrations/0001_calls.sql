-- Per-call log, partitioned by UTC day of event time. The primary key includes the partition
-- column (PostgreSQL requires it); event_id alone is unique in practice, (event_id, ts) is what
-- makes a redelivered event a no-op.
CREATE TABLE llm_calls (
    event_id              uuid             NOT NULL,
    ts                    timestamptz      NOT NULL,
    service               text             NOT NULL,
    endpoint              text             NOT NULL,
    provider              text             NOT NULL,
    request_model         text             NOT NULL,
    response_model        text,
    operation             text             NOT NULL,
    team                  text,
    user_id               text,
    prompt_version        text,
    status                text             NOT NULL,
    error_type            text,
    input_tokens          bigint           NOT NULL,
    output_tokens         bigint           NOT NULL,
    cache_read_tokens     bigint           NOT NULL,
    cache_creation_tokens bigint           NOT NULL,
    reasoning_tokens      bigint           NOT NULL,
    tokens_estimated      boolean          NOT NULL,
    cost_usd              numeric(30, 12),
    input_cost_usd        numeric(30, 12),
    cache_read_cost_usd   numeric(30, 12),
    cache_write_cost_usd  numeric(30, 12),
    output_cost_usd       numeric(30, 12),
    reasoning_cost_usd    numeric(30, 12),
    price_unknown         boolean          NOT NULL,
    price_source          text,
    latency_ms            double precision,
    ttft_ms               double precision,
    cache_hit             boolean          NOT NULL,
    cache_kind            text,
    requested_model       text,
    routing_reason        text,
    tags                  jsonb            NOT NULL DEFAULT '{}',
    prompt_text           text,
    response_text         text,
    prompt_sha256         text,
    response_sha256       text,
    ingested_at           timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX llm_calls_endpoint_ts ON llm_calls (service, endpoint, ts);
CREATE INDEX llm_calls_team_ts ON llm_calls (team, ts);

-- Rollups, rewritten per day / hour by the sink for the periods it touched.
CREATE TABLE daily_llm_costs (
    day                   date             NOT NULL,
    service               text             NOT NULL,
    endpoint              text             NOT NULL,
    model                 text             NOT NULL,
    requests              bigint           NOT NULL,
    input_tokens          bigint           NOT NULL,
    output_tokens         bigint           NOT NULL,
    cache_read_tokens     bigint           NOT NULL,
    cost_usd              numeric(30, 12)  NOT NULL,
    avg_latency_ms        double precision,
    p95_latency_ms        double precision,
    PRIMARY KEY (day, service, endpoint, model)
);

CREATE TABLE hourly_team_costs (
    hour                  timestamptz      NOT NULL,
    team                  text             NOT NULL,
    requests              bigint           NOT NULL,
    input_tokens          bigint           NOT NULL,
    output_tokens         bigint           NOT NULL,
    cost_usd              numeric(30, 12)  NOT NULL,
    PRIMARY KEY (hour, team)
);
