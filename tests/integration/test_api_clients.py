"""Admin API, clients: every endpoint's success and error paths, exact JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.api_helpers import error_fields, phone

if TYPE_CHECKING:
    from tests.support.api_helpers import ApiClient

URL = "/api/v1/clients/"


async def test_create_returns_the_contract_shape(api: ApiClient) -> None:
    number = phone()
    response = await api.http.post(
        URL, json={"telephone": number, "tag": ["urgent", "simple"], "timezone": "Asia/Singapore"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        "id": body["id"],
        "telephone": number,
        "mobile_code": int(number[1:4]),
        "tag": [{"name": "simple"}, {"name": "urgent"}],
        "timezone": "Asia/Singapore",
    }
    assert isinstance(body["id"], int)
    again = await api.http.get(f"{URL}{body['id']}/")
    assert again.status_code == 200
    assert again.json() == body


async def test_integer_telephone_single_tag_and_default_zone(api: ApiClient) -> None:
    number = phone()
    response = await api.http.post(URL, json={"telephone": int(number), "tag": "solo"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["telephone"] == number
    assert body["tag"] == [{"name": "solo"}]
    assert body["timezone"] == "UTC"
    assert (await api.http.post(URL, json={"telephone": phone()})).json()["tag"] == []


async def test_tags_are_stored_once_by_name(api: ApiClient) -> None:
    tag = f"shared-{phone()}"
    await api.http.post(URL, json={"telephone": phone(), "tag": [tag, tag]})
    before = await api.table_counts()
    created = await api.http.post(URL, json={"telephone": phone(), "tag": [tag, "  " + tag + " "]})
    assert created.json()["tag"] == [{"name": tag}]
    after = await api.table_counts()
    assert after["tag"] == before["tag"]
    assert after["client_tag"] == before["client_tag"] + 1


@pytest.mark.parametrize(
    "telephone",
    [
        "89111234567",
        "7911123456",
        "791112345678",
        "7911123456a",
        "+79111234567",
        "",
        True,
        89111234567,
        None,
        7.9e10,
        # Non-ASCII digits: Python's `\d` matches them, the database's check does not.
        "7\u0669\u0661\u0661\u0661\u0662\u0663\u0664\u0665\u0666\u0667",  # Arabic-Indic
        "7\uff19\uff11\uff11\uff11\uff12\uff13\uff14\uff15\uff16\uff17",  # fullwidth
        "7911123456\u0967",  # one Devanagari digit at the end
    ],
)
async def test_bad_telephone_is_422_naming_the_field_and_changes_nothing(
    api: ApiClient, telephone: object
) -> None:
    before = await api.table_counts()
    response = await api.http.post(URL, json={"telephone": telephone})
    assert response.status_code == 422
    assert error_fields(response.json()) == {"telephone"}
    assert await api.table_counts() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"telephone": "79111234567", "timezone": "Mars/Base"}, "timezone"),
        ({"telephone": "79111234567", "timezone": ""}, "timezone"),
        ({"telephone": "79111234567", "nickname": "x"}, "nickname"),
        ({"telephone": "79111234567", "tag": [""]}, "tag.0"),
        ({"telephone": "79111234567", "tag": ["x" * 65]}, "tag.0"),
        ({"telephone": "79111234567", "tag": {"a": 1}}, "tag"),
        ({"telephone": "79111234567", "mobile_code": 123}, "mobile_code"),
        ({}, "telephone"),
    ],
)
async def test_bad_fields_are_named(api: ApiClient, body: dict[str, object], field: str) -> None:
    before = await api.table_counts()
    response = await api.http.post(URL, json=body)
    assert response.status_code == 422, response.text
    assert field in error_fields(response.json())
    assert await api.table_counts() == before


async def test_mobile_code_matching_the_telephone_is_accepted(api: ApiClient) -> None:
    number = phone()
    response = await api.http.post(URL, json={"telephone": number, "mobile_code": int(number[1:4])})
    assert response.status_code == 201


async def test_body_that_is_not_json_or_not_an_object(api: ApiClient) -> None:
    before = await api.table_counts()
    not_json = await api.http.post(
        URL, content=b"{telephone: 7", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    assert not_json.json()["detail"][0] == {
        "field": "body",
        "message": "request body is not valid JSON",
        "type": "json_invalid",
    }
    a_list = await api.http.post(URL, json=["79111234567"])
    assert a_list.status_code == 422
    assert error_fields(a_list.json()) == {"body"}
    assert await api.table_counts() == before


async def test_telephone_taken_is_409(api: ApiClient) -> None:
    number = phone()
    assert (await api.http.post(URL, json={"telephone": number})).status_code == 201
    before = await api.table_counts()
    again = await api.http.post(URL, json={"telephone": number, "tag": ["new"]})
    assert again.status_code == 409
    assert again.json() == {
        "detail": [
            {
                "field": "telephone",
                "message": f"telephone {number} belongs to another client",
                "type": "conflict",
            }
        ]
    }
    assert await api.table_counts() == before


async def test_put_replaces_and_rederives_the_code(api: ApiClient) -> None:
    created = (await api.http.post(URL, json={"telephone": phone(), "tag": ["a", "b"]})).json()
    number = phone()
    response = await api.http.put(
        f"{URL}{created['id']}/",
        json={"telephone": number, "tag": ["c"], "timezone": "Europe/Moscow"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": created["id"],
        "telephone": number,
        "mobile_code": int(number[1:4]),
        "tag": [{"name": "c"}],
        "timezone": "Europe/Moscow",
    }
    # PUT is the whole resource: omitted fields take their defaults.
    reset = await api.http.put(f"{URL}{created['id']}/", json={"telephone": number})
    assert reset.json()["tag"] == []
    assert reset.json()["timezone"] == "UTC"


async def test_patch_changes_only_what_is_given(api: ApiClient) -> None:
    number = phone()
    created = (
        await api.http.post(URL, json={"telephone": number, "tag": ["a"], "timezone": "Asia/Tokyo"})
    ).json()
    response = await api.http.patch(f"{URL}{created['id']}/", json={"tag": ["z", "y"]})
    assert response.status_code == 200
    assert response.json() == {**created, "tag": [{"name": "y"}, {"name": "z"}]}
    null = await api.http.patch(f"{URL}{created['id']}/", json={"timezone": None})
    assert null.status_code == 422
    assert (await api.http.get(f"{URL}{created['id']}/")).json()["timezone"] == "Asia/Tokyo"


async def test_put_to_a_taken_telephone_is_409_and_changes_nothing(api: ApiClient) -> None:
    first = (await api.http.post(URL, json={"telephone": phone()})).json()
    second = (await api.http.post(URL, json={"telephone": phone(), "tag": ["keep"]})).json()
    response = await api.http.put(f"{URL}{second['id']}/", json={"telephone": first["telephone"]})
    assert response.status_code == 409
    assert (await api.http.get(f"{URL}{second['id']}/")).json() == second


async def test_missing_client_is_404_everywhere(api: ApiClient) -> None:
    missing = f"{URL}{2**62}/"
    assert (await api.http.get(missing)).status_code == 404
    assert (await api.http.put(missing, json={"telephone": phone()})).status_code == 404
    assert (await api.http.patch(missing, json={"tag": []})).status_code == 404
    response = await api.http.delete(missing)
    assert response.status_code == 404
    assert response.json() == {"detail": f"client {2**62} not found"}
    assert (await api.http.get(f"{URL}abc/")).status_code == 422


async def test_delete_then_404_and_the_telephone_is_free_again(api: ApiClient) -> None:
    number = phone()
    created = (await api.http.post(URL, json={"telephone": number})).json()
    response = await api.http.delete(f"{URL}{created['id']}/")
    assert response.status_code == 204
    assert response.content == b""
    assert (await api.http.get(f"{URL}{created['id']}/")).status_code == 404
    assert (await api.http.delete(f"{URL}{created['id']}/")).status_code == 404
    reborn = await api.http.post(URL, json={"telephone": number})
    assert reborn.status_code == 201
    assert reborn.json()["id"] != created["id"]


async def test_list_paginates_with_links(api: ApiClient) -> None:
    for _ in range(3):
        await api.http.post(URL, json={"telephone": phone()})
    everything = (await api.http.get(URL)).json()
    total = everything["count"]
    assert total >= 3
    assert everything["next"] is None
    assert everything["previous"] is None
    assert len(everything["results"]) == min(total, 1000)

    page = (await api.http.get(URL, params={"limit": 1, "offset": 1})).json()
    assert page["count"] == total
    assert page["results"] == [everything["results"][1]]
    assert page["previous"] == "http://testserver/api/v1/clients/?limit=1&offset=0"
    assert page["next"] == "http://testserver/api/v1/clients/?limit=1&offset=2"


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "offset=-1", "limit=x"])
async def test_bad_page_parameters(api: ApiClient, query: str) -> None:
    response = await api.http.get(f"{URL}?{query}")
    assert response.status_code == 422
    assert error_fields(response.json()) <= {"limit", "offset"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dGVzdC10b2tlbg=="},
        {"Authorization": "test-token"},
    ],
)
async def test_missing_or_wrong_token_is_401_json(api: ApiClient, headers: dict[str, str]) -> None:
    api.http.headers.pop("Authorization")
    response = await api.http.post(URL, json={"telephone": phone()}, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()
    assert response.headers["www-authenticate"] == "Bearer"


async def test_every_configured_token_works_and_ops_paths_are_open(api: ApiClient) -> None:
    api.http.headers.pop("Authorization")
    second = await api.http.get(
        URL, params={"limit": 1}, headers={"Authorization": "Bearer second-token"}
    )
    assert second.status_code == 200
    for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
        assert (await api.http.get(path)).status_code in {200, 503}, path
