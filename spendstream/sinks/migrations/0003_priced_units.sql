-- Issue 14: every priced unit and the service tier of a call, beside the cost they make.
-- Unit counts are parts of the counts they name (cache_write_1h of cache_creation, audio and
-- image of input/output, cached audio of cache_read); 0 when the provider reported none.
-- Constant defaults: PostgreSQL adds these without rewriting existing partitions.
ALTER TABLE llm_calls
    ADD COLUMN IF NOT EXISTS service_tier            text,
    ADD COLUMN IF NOT EXISTS provider_cost_usd       numeric(30, 12),
    ADD COLUMN IF NOT EXISTS usage_error             text,
    ADD COLUMN IF NOT EXISTS price_unknown_reason    text,
    ADD COLUMN IF NOT EXISTS cache_write_1h_tokens   bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS input_audio_tokens      bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cache_audio_read_tokens bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS output_audio_tokens     bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS input_image_tokens      bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS output_image_tokens     bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS web_searches            integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS audio_cost_usd          numeric(30, 12),
    ADD COLUMN IF NOT EXISTS image_cost_usd          numeric(30, 12),
    ADD COLUMN IF NOT EXISTS web_search_cost_usd     numeric(30, 12),
    ADD COLUMN IF NOT EXISTS request_cost_usd        numeric(30, 12);
