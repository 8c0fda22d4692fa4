"""Databricks run watcher: alerts on Databricks job run transitions and exports run metrics."""

__version__ = "0.1.0"
