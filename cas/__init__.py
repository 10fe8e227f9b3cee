"""cas: a content-addressed artifact store with chunk-level deduplication for machine-learning work."""

__version__ = "0.1.0"
__all__ = ["Store", "__version__"]


def __getattr__(name):
    # Lazy, so that `cas --version` does not import the store's dependencies.
    if name == "Store":
        from .store import Store
        return Store
    raise AttributeError(f"module 'cas' has no attribute {name!r}")
