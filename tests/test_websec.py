"""Web security logic in-process: which origins a cookie is good for, which addresses a
webhook may reach (in every spelling of an address), and the guarded connection that
judges a name by what it resolves to when a delivery connects."""

from __future__ import annotations

import ipaddress

import httpx
import jwt
import pytest
from starlette.requests import Request

from engine.api.websec import OriginPolicy, csrf_refusal, parse_origin
from engine.egress import TargetPolicy, TargetRefused, guarded_transport
from engine.users import Identity, issue_token, read_token
from tests.webhook_receiver import Receiver


def request(method: str = "GET", scheme: str = "http", **headers: str) -> Request:
    scope = {
        "type": "http", "method": method, "scheme": scheme, "path": "/", "query_string": b"",
        "server": ("127.0.0.1", 8080),
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    return Request(scope)


def test_origins_compare_by_scheme_host_and_port() -> None:
    assert parse_origin("http://127.0.0.1:8080") == ("http", "127.0.0.1", 8080)
    assert parse_origin("HTTPS://App.Example.com") == ("https", "app.example.com", 443)
    assert parse_origin("http://[::1]:9") == ("http", "::1", 9)
    for bad in ("null", "file://", "ftp://x", "http://", "http://x:99999", "http://x/path"):
        assert parse_origin(bad) is None, bad


def test_a_cookie_is_good_for_the_engines_own_pages_only() -> None:
    """A page on another port of the same host is another origin (though the same site,
    so SameSite=Strict cookies travel): refused, as a `null` origin is. Programs send no
    Origin. Listed origins are allowed; the own origin follows the request's scheme."""
    policy = OriginPolicy(["https://desk.example.com"])
    own = {"host": "127.0.0.1:8080"}
    assert policy.refusal(request(**own)) is None  # no Origin: not a browser page
    assert policy.refusal(request(origin="http://127.0.0.1:8080", **own)) is None
    assert policy.refusal(request(origin="http://127.0.0.1:9999", **own)) is not None
    assert policy.refusal(request(origin="null", **own)) is not None
    assert policy.refusal(request(origin="https://127.0.0.1:8080", **own)) is not None
    assert policy.refusal(request(origin="https://desk.example.com", **own)) is None
    public = {"origin": "https://cc.example.com", "host": "cc.example.com"}
    assert policy.refusal(request(**public)) is not None  # a page over TLS, we over http
    assert policy.refusal(request(scheme="https", **public)) is None


def test_cookie_writes_need_the_custom_header() -> None:
    assert csrf_refusal(request("GET")) is None
    assert "X-Requested-With" in (csrf_refusal(request("POST")) or "")
    assert csrf_refusal(request("POST", x_requested_with="ccengine")) is None
    assert csrf_refusal(request("DELETE")) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/", "http://0x7f000001/", "http://2130706433/", "http://0177.0.0.1/",
        "http://127.1/", "http://0x7f.1/", "http://0/", "http://0.0.0.0/", "http://[::]/",
        "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
        "http://[::ffff:10.0.0.1]/", "http://[2002:7f00:1::]/", "http://[64:ff9b::a00:1]/",
        "http://[fe80::1]/", "http://[fc00::1]/", "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.0.1/", "http://100.64.0.1/",
        "http://224.0.0.1/", "http://255.255.255.255/", "http://localhost:8080/",
        "http://LOCALHOST./", "http://api.localhost/",
    ],
)  # fmt: skip
def test_webhook_targets_that_are_not_public_are_refused(url: str) -> None:
    why = TargetPolicy().url_refusal(url)
    assert why is not None and "CCENGINE_WEBHOOK_ALLOWED_NETWORKS" in why, url


@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.com/hooks", "http://8.8.8.8/", "http://[2606:4700::1111]/",
        "http://[::ffff:8.8.8.8]/", "http://[64:ff9b::808:808]/",
    ],
)  # fmt: skip
def test_public_webhook_targets_are_accepted(url: str) -> None:
    assert TargetPolicy().url_refusal(url) is None


def test_the_allow_list_admits_its_networks_only() -> None:
    policy = TargetPolicy(["127.0.0.1/32", "10.20.0.0/16"])
    assert policy.url_refusal("http://127.0.0.1:9000/") is None
    assert policy.url_refusal("http://[::ffff:127.0.0.1]/") is None  # the same address
    assert policy.url_refusal("http://10.20.3.4/") is None
    assert policy.url_refusal("http://127.0.0.2/") is not None
    assert policy.url_refusal("http://10.21.0.1/") is not None
    assert policy.refusal(ipaddress.ip_address("::1")) is not None


async def test_a_delivery_connects_only_where_the_policy_allows(receiver: Receiver) -> None:
    """The name is judged by what it resolves to when the connection opens: `localhost`
    written as a name, or the address itself, reaches nothing unless allowed."""
    port = receiver.server.server_address[1]
    async with httpx.AsyncClient(transport=guarded_transport(TargetPolicy()), timeout=5) as http:
        for url in (f"http://localhost:{port}/hook", f"http://127.0.0.1:{port}/hook"):
            with pytest.raises(TargetRefused, match="loopback"):
                await http.post(url, content=b"{}")
    assert receiver.got == []
    allowed = guarded_transport(TargetPolicy(["127.0.0.0/8"]))
    async with httpx.AsyncClient(transport=allowed, timeout=5) as http:
        r = await http.post(f"http://localhost:{port}/hook", content=b"{}")
    assert r.status_code == 200 and len(receiver.got) == 1


def test_tokens_carry_the_persons_token_version() -> None:
    """A token names the version it was issued under; one from before versions existed
    matches none."""
    key = "k" * 48
    ann = Identity("u1", "ann", "agent", 3)
    assert read_token(issue_token(ann, key, 60), key).version == 3
    old = jwt.encode({"sub": "u1", "role": "agent", "exp": 2**40}, key, algorithm="HS256")
    assert read_token(old, key).version == -1
