"""The error of the store layer, on its own so that the store and its S3 lease (which raise it) import it from below
instead of from each other."""


class StoreError(Exception):
    """The store path or its contents cannot be used as asked; the message names the fix."""


__all__ = ["StoreError"]
