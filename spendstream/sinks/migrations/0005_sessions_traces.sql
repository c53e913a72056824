-- Issue 17: the user session and the distributed trace (one request across services) of a call,
-- and the call's own span. Nullable, no default: PostgreSQL adds them to every partition without
-- rewriting one. trace_id is 32 lowercase hex characters, span_id 16 (W3C Trace Context).
ALTER TABLE llm_calls
    ADD COLUMN IF NOT EXISTS session_id text,
    ADD COLUMN IF NOT EXISTS trace_id   text,
    ADD COLUMN IF NOT EXISTS span_id    text;

-- `report --by session|trace` and "this session's / this request's calls" look these up. An index
-- on the partitioned table is created on every partition, existing and future; partial, since
-- most calls of a service without sessions or traces carry neither.
CREATE INDEX IF NOT EXISTS llm_calls_session_ts ON llm_calls (session_id, ts)
    WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS llm_calls_trace ON llm_calls (trace_id)
    WHERE trace_id IS NOT NULL;
