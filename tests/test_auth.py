"""Credentials: PAT, rotating token files, OAuth M2M, and that no token ever leaks."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from tests.conftest import TOKEN, ClientFactory
from watcher.clock import ManualClock
from watcher.databricks import ApiError, OAuthM2M, StaticToken, TokenFile
from watcher.simulator import Fault, Simulator

CLIENT_ID = "sp-client-id-for-tests"
CLIENT_SECRET = "not-a-real-oauth-secret-0001"


async def test_wrong_token_is_a_403_and_not_retried(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """An invalid PAT gets 403 PERMISSION_DENIED at once, with the token nowhere in the error."""
    wrong = "dapi-wrong-token-for-tests"
    client = make_client(auth=StaticToken(SecretStr(wrong)))
    with pytest.raises(ApiError) as caught:
        await client.get_job(1)
    assert (caught.value.status, caught.value.error_code) == (403, "PERMISSION_DENIED")
    assert wrong not in str(caught.value)
    assert wrong not in repr(caught.value)
    assert clock.slept == []


async def test_token_file_is_reread_when_rotated(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A token file replaced in place (as a rotated Kubernetes secret) is picked up on the
    next request, without a restart."""
    job = sim.workspace.create_job("j")
    path = tmp_path / "token"
    path.write_text("dapi-old-token-for-tests\n")
    sim.tokens = {"dapi-old-token-for-tests"}
    client = make_client(auth=TokenFile(path))
    await client.get_job(job)
    sim.tokens = {"dapi-new-token-for-tests"}
    replacement = tmp_path / "token.new"
    replacement.write_text("dapi-new-token-for-tests")
    replacement.replace(path)
    await client.get_job(job)
    assert [r.status for r in sim.requests] == [200, 200]


async def test_unreadable_token_file_names_the_path(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A missing token file is a clear error that names the file."""
    from watcher.databricks import DatabricksError

    missing = tmp_path / "nope"
    with pytest.raises(DatabricksError, match=str(missing)):
        await make_client(auth=TokenFile(missing)).get_job(1)


async def test_oauth_m2m_fetches_caches_and_refreshes_before_expiry(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """Client credentials are exchanged at /oidc/v1/token once, reused, and refreshed
    shortly before expiry, so no request ever meets an expired token."""
    sim.oauth_clients = {CLIENT_ID: CLIENT_SECRET}
    sim.oauth_token_ttl = 600
    job = sim.workspace.create_job("j")
    auth = OAuthM2M(
        host=sim.url, client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET), clock=clock
    )
    client = make_client(auth=auth)
    for _ in range(3):
        await client.get_job(job)
        clock.advance(100)
    assert sim.oauth_issued == 1
    clock.advance(250)  # 550 s: inside the 60 s refresh margin of a 600 s token
    await client.get_job(job)
    assert sim.oauth_issued == 2
    assert all(r.status == 200 for r in sim.requests)


async def test_oauth_token_rejected_with_401_is_fetched_again(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """A 401 (token revoked or expired early) makes the client fetch a new token once."""
    sim.oauth_clients = {CLIENT_ID: CLIENT_SECRET}
    job = sim.workspace.create_job("j")
    auth = OAuthM2M(
        host=sim.url, client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET), clock=clock
    )
    client = make_client(auth=auth)
    await client.get_job(job)
    sim.faults.add(Fault(kind="status", status=401, body='{"error_code":"UNAUTHENTICATED"}'))
    await client.get_job(job)
    assert sim.oauth_issued == 2
    assert [r.status for r in sim.requests] == [200, 401, 200]


async def test_oauth_bad_secret_is_a_clear_error(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """Wrong client credentials raise ApiError from the token endpoint, secret not quoted."""
    sim.oauth_clients = {CLIENT_ID: CLIENT_SECRET}
    auth = OAuthM2M(
        host=sim.url, client_id=CLIENT_ID, client_secret=SecretStr("wrong-secret-x"), clock=clock
    )
    with pytest.raises(ApiError) as caught:
        await make_client(auth=auth).get_job(1)
    assert caught.value.endpoint == "oidc/v1/token"
    assert caught.value.error_code == "invalid_client"
    assert "wrong-secret-x" not in str(caught.value)


async def test_tokens_never_appear_in_logs_or_reprs(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """Across retries, errors and reprs, neither the PAT nor the OAuth secret or token is
    ever written to a log line or shown by repr()."""
    sim.oauth_clients = {CLIENT_ID: CLIENT_SECRET}
    job = sim.workspace.create_job("j")
    sim.faults.add(Fault(kind="status", status=503, retry_after="1", times=2))
    oauth = OAuthM2M(
        host=sim.url, client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET), clock=clock
    )
    static = StaticToken(SecretStr(TOKEN))
    with structlog.testing.capture_logs() as logs:
        await make_client(auth=static).get_job(job)
        await make_client(auth=oauth).get_job(job)
        with pytest.raises(ApiError):
            await make_client(auth=static).get_run(999)
    assert any(entry["event"] == "api_retry" for entry in logs)
    text = repr(logs) + repr(static) + repr(oauth)
    issued = [t for t in sim._oauth_tokens]
    for secret in [TOKEN, CLIENT_SECRET, *issued]:
        assert secret not in text
