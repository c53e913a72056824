-- Spend avoided by spendstream's response cache: on a cache hit, the cached call's cost.
ALTER TABLE llm_calls ADD COLUMN IF NOT EXISTS cache_saved_usd numeric(30, 12);
