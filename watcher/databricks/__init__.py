"""The Databricks Jobs API: client, credentials, errors and typed models."""

from watcher.databricks.auth import Auth, OAuthM2M, StaticToken, TokenFile
from watcher.databricks.client import Attempt, JobsClient, RetryPolicy, Timeouts
from watcher.databricks.errors import (
    ApiError,
    DatabricksError,
    MalformedResponse,
    RetryBudgetExceeded,
)

__all__ = [
    "ApiError",
    "Attempt",
    "Auth",
    "DatabricksError",
    "JobsClient",
    "MalformedResponse",
    "OAuthM2M",
    "RetryBudgetExceeded",
    "RetryPolicy",
    "StaticToken",
    "Timeouts",
    "TokenFile",
]
