"""The errors of the store layer, on their own so that the store and its S3 lease (which raise them) import them from
below instead of from each other."""


class StoreError(ValueError):
    """The store path or its contents cannot be used as asked; the message names the fix. A ValueError, as the
    analyses that read a store (SpRAy, its pages, the ViRelAy export) have always reported a damaged store."""


class NotAStore(StoreError, FileNotFoundError):
    """The path holds no relprop store (no zarr.json with relprop_store); a FileNotFoundError too, as a missing file
    is for the analyses."""


__all__ = ["StoreError", "NotAStore"]
