"""tracker: run tracking (runs, names, steps, kinds → content hashes) on top of the cas store; not yet built."""

__all__: list[str] = []
