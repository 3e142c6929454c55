"""A persistent reference index: a lab archive embedded once, new figures checked against it.

``build_index`` / ``add_to_index`` / ``prune_index`` / ``index_info`` manage the index folder (``store``: atomic,
append-only segments; ``ann``: exact or IVF FAISS search); ``attach_index`` hands a scan the
nearest indexed images of its queries; the scan's ``loader`` decodes images in worker processes.
"""

from .build import add_to_index, build_index, index_info, list_images, prune_index
from .query import attach_index, nearest, open_for_scan
from .store import IndexBusyError, IndexFormatError, ModelMismatchError, ReferenceIndex, load

__all__ = [
    "IndexBusyError",
    "IndexFormatError",
    "ModelMismatchError",
    "ReferenceIndex",
    "add_to_index",
    "attach_index",
    "build_index",
    "index_info",
    "list_images",
    "load",
    "nearest",
    "open_for_scan",
    "prune_index",
]
