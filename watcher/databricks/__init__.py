"""The Databricks Jobs API: client, credentials, errors and typed models."""

from watcher.databricks.auth import (
    AZURE_DATABRICKS_APP_ID,
    ENTRA_ID,
    Auth,
    AzureServicePrincipal,
    OAuthM2M,
    StaticToken,
    TokenFile,
)
from watcher.databricks.client import (
    Attempt,
    JobsClient,
    ListedJobsPage,
    ListedRunsPage,
    RetryPolicy,
    Timeouts,
)
from watcher.databricks.errors import (
    ApiError,
    DatabricksError,
    ItemRejected,
    MalformedResponse,
    RejectedItem,
    RetryBudgetExceeded,
)

__all__ = [
    "AZURE_DATABRICKS_APP_ID",
    "ENTRA_ID",
    "ApiError",
    "Attempt",
    "Auth",
    "AzureServicePrincipal",
    "DatabricksError",
    "ItemRejected",
    "JobsClient",
    "ListedJobsPage",
    "ListedRunsPage",
    "MalformedResponse",
    "OAuthM2M",
    "RejectedItem",
    "RetryBudgetExceeded",
    "RetryPolicy",
    "StaticToken",
    "Timeouts",
    "TokenFile",
]
