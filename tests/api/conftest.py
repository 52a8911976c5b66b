from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests import factories
from voms.api.app import create_app
from voms.runtime import Runtime


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt), raise_server_exceptions=False) as test_client:
        yield test_client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin(rt: Runtime) -> dict[str, str]:
    return bearer(factories.api_key(rt, "admin"))
