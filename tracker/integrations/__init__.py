"""Integrations: cas reached through the tools people train with (fsspec, Lightning, transformers, MLflow).

Each is registered by the package's entry points (fsspec's `cas://` and `runs://`, MLflow's `cas+file`
and `cas+s3`) or used directly (`tracker.integrations.hf.CasCallback`); docs/integrations.md shows one
example per tool.
"""
