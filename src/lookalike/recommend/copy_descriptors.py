"""A catalogue's copy descriptors: the ``copies`` near-duplicate detector's candidates and checks.

The packaged ``copy-descriptor`` (:mod:`lookalike.models.copy_descriptor`) embeds every catalogue
photo once; its vectors are cached like any embedder's, by content hash, under
``<project>/embeddings/<descriptor id>/``, so later runs embed only new photos. Without the
packaged head (a stripped install), the detector falls back to image-index neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.catalogue.copies import CopyMatcher, CopySettings
from lookalike.catalogue.fingerprints import Fingerprints


def descriptor_model() -> Any:
    """The packaged copy descriptor, or None when the package ships no trained head."""
    from lookalike.models.copy_descriptor import CopyDescriptorEmbedder

    model = CopyDescriptorEmbedder()
    return model if model.trained else None


def catalogue_descriptors(project, model, ids: Sequence[str], progress: bool = True
                          ) -> np.ndarray:
    """``[len(ids), dim]`` descriptors of catalogue items (cached by content hash when the
    project is writable)."""
    from lookalike.catalogue.images import decode_image
    from lookalike.models.cache import EmbeddingCache, embed_with_cache

    hashes = project.store.content_hashes(list(ids))
    keys = [hashes[i] for i in ids]
    paths = {item.content_hash: Path(item.image_path) for item in project.store.items(list(ids))}
    load = lambda key: decode_image(paths[key])  # noqa: E731
    if project.read_only:
        return model.embed([load(key) for key in keys])
    cache = EmbeddingCache(project.layout.embeddings(model.embedder_id), model.embedder_id,
                           model.dim)
    return embed_with_cache(model, keys, load, cache, progress=progress)


def descriptor_matcher(project, prints: Fingerprints, settings: CopySettings,
                       model: Any = None) -> CopyMatcher | None:
    """A :class:`CopyMatcher` that checks copy descriptors, or None without a descriptor."""
    model = model or descriptor_model()
    if model is None:
        return None
    vectors = catalogue_descriptors(project, model, prints.ids, progress=False)
    return CopyMatcher(prints, settings, descriptors=vectors, describe=model.embed_one)


__all__ = ["descriptor_model", "catalogue_descriptors", "descriptor_matcher"]
