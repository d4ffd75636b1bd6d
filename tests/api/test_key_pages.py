"""``GET /v1/api-keys?page=&per_page=``: a bare array still, with the pages in headers."""

import pytest
from starlette.testclient import TestClient

from keyguard.runtime import Keyguard
from tests.conftest import Tenant

KEYS = "/v1/api-keys"


@pytest.fixture
def ids(keyguard: Keyguard, tenant: Tenant) -> list[int]:
    """The tenant's key ids, its first key and nine more, labelled by their number."""
    for number in range(1, 10):
        label = f"{'even' if number % 2 == 0 else 'odd'} {number}"
        keyguard.service.create_key(tenant.account_id, {"label": label})
    return [view.key.id for view in keyguard.service.list_keys(tenant.account_id)]


def test_without_page_parameters_every_key_comes_with_the_total(
    client: TestClient, tenant: Tenant, ids: list[int]
) -> None:
    response = client.get(KEYS, headers=tenant.headers)

    assert [key["id"] for key in response.json()] == ids
    assert response.headers["X-Total-Count"] == "10"
    assert "Link" not in response.headers


def test_a_page_is_a_bare_array_of_that_slice_with_total_and_links(
    client: TestClient, tenant: Tenant, ids: list[int]
) -> None:
    response = client.get(KEYS, params={"page": 2, "per_page": 3}, headers=tenant.headers)

    assert response.status_code == 200
    assert [key["id"] for key in response.json()] == ids[3:6]
    assert response.headers["X-Total-Count"] == "10"
    assert response.headers["Link"] == (
        '</v1/api-keys?page=1&per_page=3>; rel="first", '
        '</v1/api-keys?page=1&per_page=3>; rel="prev", '
        '</v1/api-keys?page=3&per_page=3>; rel="next", '
        '</v1/api-keys?page=4&per_page=3>; rel="last"'
    )


def test_the_last_page_has_no_next_and_the_first_no_prev(
    client: TestClient, tenant: Tenant, ids: list[int]
) -> None:
    first = client.get(KEYS, params={"page": 1, "per_page": 4}, headers=tenant.headers)
    last = client.get(KEYS, params={"page": 3, "per_page": 4}, headers=tenant.headers)

    assert [key["id"] for key in last.json()] == ids[8:]
    assert 'rel="prev"' not in first.headers["Link"]
    assert 'rel="next"' in first.headers["Link"]
    assert 'rel="next"' not in last.headers["Link"]
    assert 'rel="prev"' in last.headers["Link"]


def test_page_alone_pages_by_a_hundred_and_per_page_alone_starts_at_page_one(
    client: TestClient, tenant: Tenant, ids: list[int]
) -> None:
    by_page = client.get(KEYS, params={"page": 1}, headers=tenant.headers)
    by_size = client.get(KEYS, params={"per_page": 2}, headers=tenant.headers)

    assert [key["id"] for key in by_page.json()] == ids
    assert by_page.headers["Link"] == (
        '</v1/api-keys?page=1&per_page=100>; rel="first", '
        '</v1/api-keys?page=1&per_page=100>; rel="last"'
    )
    assert [key["id"] for key in by_size.json()] == ids[:2]


def test_a_page_past_the_last_is_empty_and_links_back(
    client: TestClient, tenant: Tenant, ids: list[int]
) -> None:
    response = client.get(KEYS, params={"page": 9, "per_page": 5}, headers=tenant.headers)

    assert response.json() == []
    assert response.headers["X-Total-Count"] == str(len(ids))
    assert response.headers["Link"] == (
        '</v1/api-keys?page=1&per_page=5>; rel="first", '
        '</v1/api-keys?page=2&per_page=5>; rel="last"'
    )


@pytest.mark.usefixtures("ids")
def test_label_filters_the_pages_and_their_total_and_stays_in_the_links(
    client: TestClient, tenant: Tenant
) -> None:
    response = client.get(
        KEYS, params={"label": "EVEN", "page": 1, "per_page": 2}, headers=tenant.headers
    )

    assert [key["label"] for key in response.json()] == ["even 2", "even 4"]
    assert response.headers["X-Total-Count"] == "4"
    assert '</v1/api-keys?label=EVEN&page=2&per_page=2>; rel="next"' in response.headers["Link"]


@pytest.mark.usefixtures("ids")
def test_a_key_given_as_appid_never_comes_back_in_the_links(
    client: TestClient, tenant: Tenant
) -> None:
    response = client.get(KEYS, params={"appid": tenant.token, "page": 1, "per_page": 2})

    assert response.status_code == 200
    assert tenant.token not in str(response.headers)


def test_the_total_follows_creates_deletes_and_rolls(
    client: TestClient, tenant: Tenant, ids: list[int]
) -> None:
    def total() -> int:
        response = client.get(KEYS, params={"per_page": 1}, headers=tenant.headers)
        return int(response.headers["X-Total-Count"])

    client.delete(f"{KEYS}/{ids[-1]}", headers=tenant.headers)
    assert total() == 9
    client.post(f"{KEYS}/{ids[-2]}/roll", headers=tenant.headers)
    assert total() == 10
    client.post(KEYS, json={"label": "new"}, headers=tenant.headers)
    assert total() == 11


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"page": 0}, "page"),
        ({"page": -1}, "page"),
        ({"page": "two"}, "page"),
        ({"page": 10**9 + 1}, "page"),
        ({"per_page": 0}, "per_page"),
        ({"per_page": 1001}, "per_page"),
        ({"per_page": 2.5}, "per_page"),
    ],
)
def test_if_a_page_parameter_is_unacceptable_then_400_with_a_wavix_body(
    client: TestClient, tenant: Tenant, params: dict[str, int | float | str], name: str
) -> None:
    response = client.get(KEYS, params=params, headers=tenant.headers)

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": f"Missing or invalid parameter {name}"}
