"""Text embedders behind one interface: a local model shipped by a package, or an HTTP API.

``LocalEmbedder`` loads WordLlama's ``l2_supercat`` static embeddings (Llama-2 token vectors,
average-pooled; 256 dims) straight from the files inside the ``wordllama`` wheel: no model hub,
no network, ~0.1 s to load and ~50 µs per short query on one core. It was picked over the
alternatives by measurement (README "Semantic cache"): MiniLM-class transformers need torch
(≈1 GB installed), while the static model is a 33 MB wheel. WordLlama's own ``load()`` looks
for the tokenizer in a folder that its wheel does not have and then tries Hugging Face, so the
files are opened here directly.

``HttpEmbedder`` speaks the OpenAI ``/v1/embeddings`` API, which OpenAI, Azure OpenAI, vLLM,
TEI and most gateways serve.

Vectors come back L2-normalised float32 so a dot product is the cosine similarity.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """What the cache and the router need from an embedding model."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Rows of unit-length float32 vectors, one per text."""
        ...


def normalise(m: npt.NDArray[Any]) -> Vectors:
    m = np.asarray(m, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: Vectors = (m / norms).astype(np.float32)
    return out


class LocalEmbedder:
    """WordLlama l2_supercat from the installed wheel (offline)."""

    def __init__(self, dim: int = 256) -> None:
        import wordllama
        from safetensors import safe_open
        from tokenizers import Tokenizer

        root = Path(wordllama.__file__).parent
        weights = root / "weights" / "l2_supercat_256.safetensors"
        tokenizer = root / "tokenizers" / "l2_supercat_tokenizer_config.json"
        if not weights.exists() or not tokenizer.exists():
            raise FileNotFoundError(f"wordllama's bundled model files are missing under {root}")
        if dim not in (64, 128, 256):
            raise ValueError("dim must be 64, 128 or 256 (the model's Matryoshka sizes)")
        with safe_open(str(weights), framework="np") as f:
            table = f.get_tensor("embedding.weight")[:, :dim]
        self.table: Vectors = np.ascontiguousarray(table, dtype=np.float32)
        self.tokenizer: Any = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.dim = dim
        self.name = f"wordllama-l2_supercat-{dim}"
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._lock:  # the Rust tokenizer is not documented as thread-safe for batch calls
            encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for i, enc in enumerate(encs):
            if enc.ids:
                out[i] = self.table[enc.ids].mean(axis=0)
        return normalise(out)


class HttpEmbedder:
    """OpenAI-compatible embeddings endpoint (``POST {base_url}/embeddings``)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        dim: int | None = None,
        timeout_s: float = 5.0,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        import httpx

        headers = {"Content-Type": "application/json", **(extra_headers or {})}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s
        )
        self.model = model
        self.name = f"http:{model}"
        self.dim = dim or 0
        """0 until the first response tells the size (unless given)."""

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        body: dict[str, Any] = {"model": self.model, "input": list(texts)}
        resp = self.client.post("/embeddings", json=body)
        resp.raise_for_status()
        data = sorted(resp.json()["data"], key=lambda d: d["index"])
        m = normalise(np.array([d["embedding"] for d in data], dtype=np.float32))
        if len(m) != len(texts):
            raise ValueError(f"embeddings API returned {len(m)} vectors for {len(texts)} inputs")
        if self.dim and m.shape[1] != self.dim:
            raise ValueError(f"embeddings API returned dim {m.shape[1]}, expected {self.dim}")
        self.dim = int(m.shape[1])
        return m

    def close(self) -> None:
        self.client.close()


_shared: dict[int, LocalEmbedder] = {}
_shared_lock = threading.Lock()


def local_embedder(dim: int = 256) -> LocalEmbedder:
    """One process-wide local model per size (the table is 32 MB at 256 dims)."""
    with _shared_lock:
        if dim not in _shared:
            _shared[dim] = LocalEmbedder(dim)
        return _shared[dim]
