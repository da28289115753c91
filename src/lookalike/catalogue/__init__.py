"""The catalogue layer: safe image decoding, catalogue sources, the project's item store, ingest.

    from lookalike.catalogue import CatalogueStore, ingest
    with CatalogueStore("lookalike-data") as store:
        report = ingest("demo", store)
        print(report.summary())
"""

from lookalike.catalogue.images import decode_image, image_info, sha256_hex
from lookalike.catalogue.ingest import IngestReport, ingest
from lookalike.catalogue.sources import (
    CatalogueSource,
    SourceRecord,
    find_products_parquet,
    load_fashion_mnist,
    load_products_frame,
    open_source,
)
from lookalike.catalogue.store import CatalogueStore, Item, Reject

__all__ = [
    "CatalogueSource", "CatalogueStore", "IngestReport", "Item", "Reject", "SourceRecord",
    "decode_image", "find_products_parquet", "image_info", "ingest", "load_fashion_mnist",
    "load_products_frame", "open_source", "sha256_hex",
]
