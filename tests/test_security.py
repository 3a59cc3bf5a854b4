"""What a web page may not do to a local server (docs/server.md, "Security"; quickdraft.server.guard).

Any page the user opens can send "simple" cross-origin requests to 127.0.0.1 (a text/plain body, no
preflight) and, with DNS rebinding, requests the browser takes for same-origin. So: a body must be JSON (415),
a browser Origin must be in server.cors_origins (403), a loopback server answers only loopback Host names (403),
the admin swap needs a key and a model the configuration names, and what the server waits for is said without
where (node and worker addresses) to callers without the key.

The rule is tested as pure functions; serve's ASGI host in process, before it loads anything (no model: the
checks come first); and, as the issue reported it, a real `quickdraft serve` of smollm2-135m (`smol_server`).
The node's WebSocket handshake is tested in tests/test_node_auth.py.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from starlette.datastructures import Headers
from starlette.testclient import TestClient

from quickdraft.config import Config, ServerConfig, load_config
from quickdraft.server.guard import RequestRules
from quickdraft.server.startup import ServingHost, public_waiting

EVIL = "https://evil.example"
SWAP = "/v1/quickdraft/admin/swap"
ATTACK = {"model": "node://127.0.0.1:9"}  # the issue's: every later prompt would go to this node
JSON = {"content-type": "application/json"}


def refusal(rules: RequestRules, method: str = "GET", network: bool = True, **headers: str):
    r = rules.check(method, Headers(headers={k.replace("_", "-"): v for k, v in headers.items()}), network=network)
    return None if r is None else (r.status, r.code)


# ---- the rule ---------------------------------------------------------------------------------------------
LOCAL = RequestRules.for_server(ServerConfig())  # the default: 127.0.0.1, nothing allowed


@pytest.mark.parametrize("method, headers, expected", [
    ("GET", {}, None),  # curl, SDKs: no Origin, and HTTP/1.0 may send no Host
    ("GET", {"host": "127.0.0.1:8088"}, None),
    ("GET", {"host": "localhost:8088"}, None),
    ("GET", {"host": "LocalHost."}, None),
    ("GET", {"host": "[::1]:8088"}, None),
    ("GET", {"host": "127.0.0.2"}, None),
    ("GET", {"host": "attacker.example:8088"}, (403, "host_not_allowed")),  # DNS rebinding
    ("GET", {"host": "localhost.attacker.example"}, (403, "host_not_allowed")),
    ("GET", {"host": "127.0.0.1.nip.io:8088"}, (403, "host_not_allowed")),
    ("GET", {"origin": EVIL}, (403, "origin_not_allowed")),
    ("GET", {"origin": "null"}, (403, "origin_not_allowed")),  # sandboxed frames, file:// pages
    ("POST", {"content_type": "application/json", "content_length": "2"}, None),
    ("POST", {"content_type": "Application/JSON; charset=utf-8", "content_length": "2"}, None),
    ("POST", {"content_length": "0"}, None),  # no body: nothing to parse
    ("POST", {"content_type": "text/plain", "content_length": "30"}, (415, "unsupported_media_type")),
    ("POST", {"content_length": "30"}, (415, "unsupported_media_type")),  # fetch() of a Blob: no type, no preflight
    ("POST", {"content_type": "text/plain", "transfer_encoding": "chunked"}, (415, "unsupported_media_type")),
    ("POST", {"content_type": "application/x-www-form-urlencoded", "content_length": "9"},
     (415, "unsupported_media_type")),
    ("POST", {"content_type": "multipart/form-data; boundary=x", "content_length": "9"},
     (415, "unsupported_media_type")),
    ("POST", {"content_type": "application/jsonp", "content_length": "9"}, (415, "unsupported_media_type")),
])
def test_the_rule_on_a_loopback_server(method, headers, expected):
    assert refusal(LOCAL, method, **headers) == expected


def test_off_loopback_the_host_is_not_checked_but_the_rest_is():
    rules = RequestRules.for_server(ServerConfig(host="0.0.0.0", api_key="k"))
    assert refusal(rules, host="my-server.lan:8088") is None  # reached by many names
    assert refusal(rules, origin=EVIL) == (403, "origin_not_allowed")
    assert refusal(rules, "POST", content_type="text/plain", content_length="9") == (415, "unsupported_media_type")


def test_a_connection_no_browser_can_open_skips_the_host_check_only():
    assert refusal(LOCAL, host="testserver", network=False) is None  # an in-process client
    assert refusal(LOCAL, origin=EVIL, network=False) == (403, "origin_not_allowed")


def test_allowed_hosts():
    rules = RequestRules.for_server(ServerConfig(allowed_hosts=["Proxy.LAN"]))
    assert refusal(rules, host="proxy.lan:443") is None
    assert refusal(rules, host="other.lan") == (403, "host_not_allowed")
    assert refusal(RequestRules.for_server(ServerConfig(allowed_hosts=["*"])), host="any.example") is None


def test_cors_origins():
    rules = RequestRules.for_server(ServerConfig(cors_origins=["http://localhost:3000", "http://127.0.0.1:*"]))
    for allowed in ("http://localhost:3000", "http://LOCALHOST:3000/", "http://127.0.0.1:5173", "http://127.0.0.1"):
        assert refusal(rules, origin=allowed) is None, allowed
    for refused in ("http://localhost:3001", "https://localhost:3000", "http://127.0.0.1.attacker.example",
                    "http://127.0.0.1:80.attacker.example", EVIL):
        assert refusal(rules, origin=refused) == (403, "origin_not_allowed"), refused
    assert refusal(RequestRules.for_server(ServerConfig(cors_origins=["*"])), origin=EVIL) is None


def test_the_settings_from_the_environment_and_masked():
    config = load_config(env={"QUICKDRAFT_SERVER__CORS_ORIGINS": "http://localhost:3000, http://127.0.0.1:*",
                              "QUICKDRAFT_SERVER__ALLOWED_HOSTS": "proxy.lan",
                              "QUICKDRAFT_SERVER__ADMIN_KEY": "admin secret"})
    assert config.server.cors_origins == ["http://localhost:3000", "http://127.0.0.1:*"]
    assert config.server.allowed_hosts == ["proxy.lan"]
    assert config.public_dict()["server"]["admin_key"] == "***"
    assert ServerConfig().cors_origins == [] and ServerConfig().allowed_hosts == []  # nothing allowed by default


def test_waiting_for_without_where():
    waiting = {"target node node://10.9.8.7:8471": "cannot connect to node://10.9.8.7:8471",
               "RPC worker 10.9.8.6:50052": "Connection refused", "RPC worker 10.9.8.5:50052": "not probed yet"}
    assert public_waiting(waiting) == {"target node": "not available yet", "RPC worker 1": "not available yet",
                                       "RPC worker 2": "not available yet"}
    assert public_waiting({"target node": "loading the target over the RPC workers"}) == {
        "target node": "not available yet"}


def test_node_metrics_are_labelled_without_the_address():
    from quickdraft.node.metrics import DRAFT_FAILURES, node_label

    DRAFT_FAILURES.labels("node://10.250.0.9:8472?key=s3cret").inc()
    text = generate_latest(REGISTRY).decode()
    assert "10.250.0.9" not in text and "s3cret" not in text
    label = node_label("node://10.250.0.9:8472")  # the same node, whatever options its address carries
    assert label.startswith("node-") and f'quickdraft_draft_failures_total{{node="{label}"}} 1.0' in text


def test_cluster_swap_sends_the_admin_key():
    from quickdraft.cluster import _auth_headers

    both = Config.model_validate({"server": {"api_key": "api", "admin_key": "admin"}})
    assert _auth_headers(both, admin=True) == {"Authorization": "Bearer admin"}
    assert _auth_headers(both) == {"Authorization": "Bearer api"}
    api_only = Config.model_validate({"server": {"api_key": "api"}})
    assert _auth_headers(api_only, admin=True) == {"Authorization": "Bearer api"}


# ---- serve's host, in process, before it loads anything ---------------------------------------------------
def host_client(models: dict | None = None, **server) -> tuple[ServingHost, TestClient]:
    """serve's ASGI host, not started (its lifespan never runs: nothing loads, every route answers 503 unless
    refused first), reached over "127.0.0.1" as a real connection would be (so the Host check applies)."""
    config = Config.model_validate({"models": {"target": "smollm2-135m"}, "server": server})
    host = ServingHost(config, models=models)
    return host, TestClient(host, base_url="http://127.0.0.1:8088")


def error_code(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error["code"]


def test_a_page_cannot_send_the_swap_as_text():
    _, client = host_client(api_key="k")
    r = client.post(SWAP, content=b'{"model": "node://127.0.0.1:9"}',
                    headers={"content-type": "text/plain", "authorization": "Bearer k"})
    assert error_code(r, 415) == "unsupported_media_type"


def test_swap_is_refused_on_a_server_without_a_key():
    _, client = host_client()
    assert error_code(client.post(SWAP, json=ATTACK), 403) == "admin_disabled"


def test_swap_needs_the_admin_key():
    _, client = host_client(api_key="api", admin_key="admin")
    for headers in ({}, {"authorization": "Bearer api"}, {"authorization": "Bearer wrong"}):
        assert error_code(client.post(SWAP, json={"model": "smollm2-135m"}, headers=headers), 401) == \
            "invalid_api_key"
    # with the admin key, the request gets as far as the server's state (not serving yet)
    r = client.post(SWAP, json={"model": "smollm2-135m"}, headers={"authorization": "Bearer admin"})
    assert error_code(r, 503) == "server_starting"


@pytest.mark.parametrize("name", ["node://127.0.0.1:9", "/tmp/elsewhere.gguf", "gemma-3-270m", "x" * 1000])
def test_swap_only_to_models_the_configuration_names(name):
    host, client = host_client(models={"smol-q8": {"path": "smollm2-135m-q8_0", "ctx": 512}}, api_key="k")
    key = {"authorization": "Bearer k"}
    r = client.post(SWAP, json={"model": name}, headers=key)
    assert error_code(r, 400) == "model_not_allowed"
    assert r.json()["error"]["param"] == "model" and "smol-q8" in r.json()["error"]["message"]
    for allowed in ("smol-q8", "smollm2-135m"):  # a cluster model; the target it started with
        assert error_code(client.post(SWAP, json={"model": allowed}, headers=key), 503) == "server_starting"
    assert host.state == "starting"


def test_the_swap_body_is_bounded():
    _, client = host_client(api_key="k")
    r = client.post(SWAP, json={"model": "x", "pad": "y" * 100_000}, headers={"authorization": "Bearer k"})
    assert error_code(r, 413) == "request_too_large"


WAITING = {"target node node://10.9.8.7:8471": "cannot connect to node://10.9.8.7:8471: Connection refused",
           "RPC worker 10.9.8.6:50052": "Connection refused"}


def test_health_says_what_it_waits_for_but_not_where_without_the_key():
    host, client = host_client(api_key="k")
    host.waiting = dict(WAITING)
    for r in (client.get("/health"), client.get("/v1/models")):
        assert r.status_code == 503 and "10.9.8" not in r.text, r.text
    body = client.get("/health").json()
    assert body["status"] == "starting" and body["waiting_for"] == {"target node": "not available yet",
                                                                    "RPC worker": "not available yet"}
    assert body["message"] == "the server is starting: waiting for target node, RPC worker"
    keyed = client.get("/health", headers={"authorization": "Bearer k"}).json()
    assert keyed["waiting_for"] == WAITING and "node://10.9.8.7:8471" in keyed["message"]
    host.state, host.error = "failed", "BackendsNotReady: gave up waiting for target node node://10.9.8.7:8471"
    assert "10.9.8" not in client.get("/health").text and "10.9.8" not in client.get("/v1/models").text
    assert "node://10.9.8.7:8471" in client.get("/health", headers={"authorization": "Bearer k"}).text


def test_a_server_without_a_key_tells_every_caller_where():
    """Every local caller may use a keyless server anyway (web pages are kept out by the checks above)."""
    host, client = host_client()
    host.waiting = dict(WAITING)
    assert client.get("/health").json()["waiting_for"] == WAITING


def test_browser_requests_to_serve_before_it_is_ready():
    _, client = host_client()
    assert error_code(client.get("/health", headers={"origin": EVIL}), 403) == "origin_not_allowed"
    assert error_code(client.get("/health", headers={"host": "attacker.example:8088"}), 403) == "host_not_allowed"
    assert client.get("/health", headers={"host": "localhost:8088"}).status_code == 503  # past the checks


def test_cors_for_an_allowed_origin():
    page = "http://localhost:3000"
    _, client = host_client(cors_origins=[page])
    preflight = {"origin": page, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    r = client.options("/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
    r = client.options("/v1/chat/completions", headers={**preflight, "origin": EVIL})
    assert error_code(r, 403) == "origin_not_allowed"
    r = client.get("/health", headers={"origin": page})
    assert r.status_code == 503 and r.headers["access-control-allow-origin"] == page


# ---- the app alone (create_app, for uvicorn.run) ----------------------------------------------------------
def test_create_app_refuses_browser_requests(smol_engine):
    from quickdraft.server.app import create_app

    with TestClient(create_app(smol_engine, Config()), base_url="http://127.0.0.1:8088") as client:
        body = b'{"prompt": "Hi", "max_tokens": 2}'
        r = client.post("/v1/completions", content=body, headers={"content-type": "text/plain"})
        assert error_code(r, 415) == "unsupported_media_type"
        assert error_code(client.get("/v1/models", headers={"origin": EVIL}), 403) == "origin_not_allowed"
        r = client.get("/v1/models", headers={"host": "attacker.example:8088"})
        assert error_code(r, 403) == "host_not_allowed"
        r = client.post("/v1/completions", content=body, headers=JSON)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


# ---- a real `quickdraft serve`, keyless on loopback, as in the issue ----------------------------------------
def test_a_web_page_cannot_take_a_local_server_out(smol_server):
    root = smol_server.root
    r = httpx.post(f"{root}{SWAP}", content=b'{"model": "node://127.0.0.1:9"}',
                   headers={"content-type": "text/plain"}, timeout=15)
    assert error_code(r, 415) == "unsupported_media_type"
    assert error_code(httpx.post(f"{root}{SWAP}", json=ATTACK, timeout=15), 403) == "admin_disabled"
    r = httpx.get(f"{root}/v1/models", timeout=15)  # the issue: no answer within 15 s
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "smollm2-135m"
    assert httpx.get(f"{root}/health", timeout=15).json()["status"] == "ok"


def test_browser_requests_to_a_real_server(smol_server):
    root, port = smol_server.root, smol_server.port
    body = {"prompt": "Hi", "max_tokens": 2}
    for path in ("/v1/chat/completions", "/v1/completions", "/completions"):
        r = httpx.post(f"{root}{path}", content=b'{"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}',
                       headers={"content-type": "text/plain"}, timeout=60)
        assert error_code(r, 415) == "unsupported_media_type"
    completions = f"{root}/v1/completions"
    assert error_code(httpx.post(completions, json=body, headers={"origin": EVIL}, timeout=60), 403) == \
        "origin_not_allowed"
    r = httpx.post(completions, json=body, headers={"host": f"attacker.example:{port}"}, timeout=60)  # rebinding
    assert error_code(r, 403) == "host_not_allowed"
    r = httpx.post(completions, json=body, headers={"host": f"localhost:{port}"}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
