-- Issue 14: cached image input tokens (part of cache_read_tokens and of input_image_tokens),
-- priced apart by OpenAI Realtime and gpt-image models.
ALTER TABLE llm_calls ADD COLUMN IF NOT EXISTS cache_image_read_tokens bigint NOT NULL DEFAULT 0;
