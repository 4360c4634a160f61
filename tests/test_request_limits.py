"""Bad input never reaches a 500, against the live ASGI server (daphne, as `make serve` and
docker-compose run it): deeply nested JSON, a 200 MB body, a chunked upload, a 20 KB URL,
an oversized header and a malformed multipart body each get their documented 4xx in the
API's error shape (docs/api.md), and the web process's memory stays bounded."""

import http.client
import json
import socket
import threading
import time

import pytest
import requests
from rest_framework.authtoken.models import Token

from .live_server import daphne, rss_mb

pytestmark = pytest.mark.django_db(transaction=True)

MB = 1_048_576


class PeakRss(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, rss_mb(pid), threading.Event()

    def run(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))


def assert_error_shape(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and body["detail"] and "field" in body, body
    return body


@pytest.fixture
def server():
    with daphne() as running:
        yield running


@pytest.fixture
def alice_token(alice):
    return Token.objects.create(user=alice).key


@pytest.fixture
def carol_token(carol):
    return Token.objects.create(user=carol).key


def test_deeply_nested_json_is_a_400_everywhere(server, alice_token, carol_token):
    base, _ = server
    deep_list = "[" * 970 + "]" * 970
    deep_object = '{"a":' * 970 + "1" + "}" * 970
    for path, token in [("/api/v1/auth/token/", None), ("/api/v1/jobs/quote/", None),
                        ("/api/v1/jobs/", alice_token), ("/api/v1/offers/", carol_token)]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        for body in (deep_list, deep_object):
            r = requests.post(base + path, data=body, headers=headers, timeout=30)
            data = assert_error_shape(r, 400, "parse_error")
            assert "deeper than 32" in data["detail"], data
    # Nesting within the limit still parses (and is then judged on its content).
    r = requests.post(base + "/api/v1/auth/token/", data="[" * 20 + "]" * 20,
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert_error_shape(r, 400, "invalid")


def test_a_200_mb_body_is_refused_from_its_content_length_with_memory_bounded(server, alice_token):
    base, pid = server
    host, port = base.removeprefix("http://").split(":")
    size = 200 * MB
    chunk = b"x" * MB
    sent = 0

    def body():
        nonlocal sent
        for _ in range(size // MB):
            sent += MB
            yield chunk

    before = rss_mb(pid)
    watcher = PeakRss(pid)
    watcher.start()
    try:
        for path, headers in [
            ("/api/v1/datasets/", {"Authorization": f"Token {alice_token}",
                                   "Content-Type": "multipart/form-data; boundary=b"}),
            ("/api/v1/auth/token/", {"Content-Type": "application/json"}),
        ]:
            sent = 0
            started = time.monotonic()
            # http.client sends an iterable body as it is when given its length (requests
            # would add Transfer-Encoding: chunked, which with a length is a malformed request).
            conn = http.client.HTTPConnection(host, port, timeout=60)
            try:
                conn.request("POST", path, body=body(), headers={**headers, "Content-Length": str(size)})
                r = conn.getresponse()
                status, content_type, payload = r.status, r.getheader("Content-Type"), r.read()
            except OSError as exc:
                pytest.fail(f"{path}: no answer after {sent} bytes sent ({exc!r})")
            finally:
                conn.close()
            assert status == 413 and content_type == "application/json", (status, payload[:300])
            data = json.loads(payload)
            assert data["code"] == "too_large" and "200.0 MB" in data["detail"], data
            assert time.monotonic() - started < 30
    finally:
        watcher.stop.set()
        watcher.join()
    # Nothing of the body was kept: the process grew by far less than the body.
    assert watcher.peak - before < 100, (before, watcher.peak)


def test_a_200_mb_body_gets_its_answer_before_it_is_sent(server):
    """A client that reads while it sends (or waits for 100-continue) learns of the
    refusal after the headers, without sending the body."""
    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/datasets/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 209715200\r\nExpect: 100-continue\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert json.loads(body)["code"] == "too_large"


def test_a_chunked_upload_is_a_411_with_a_message(server, alice_token):
    base, _ = server

    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\n"
        yield b"a,b\n1,2\n3,4\n"
        yield b"\r\n--b--\r\n"

    # A generator without a length: requests sends it chunked (Transfer-Encoding).
    r = requests.post(base + "/api/v1/datasets/", data=body(), timeout=30, headers={
        "Authorization": f"Token {alice_token}", "Content-Type": "multipart/form-data; boundary=b"})
    data = assert_error_shape(r, 411, "length_required")
    assert "Content-Length" in data["detail"], data


def test_a_small_chunked_json_body_is_read_and_a_large_one_refused(server):
    base, _ = server

    def small():
        yield b'{"username": "nobody",'
        yield b' "password": "wrong"}'

    r = requests.post(base + "/api/v1/auth/token/", data=small(), timeout=30,
                      headers={"Content-Type": "application/json"})
    # Read whole: the credentials were judged, not found missing.
    data = assert_error_shape(r, 400, "authorization")
    assert "Unable to log in" in data["detail"], data

    def large():
        yield b'{"username": "'
        for _ in range(3):
            yield b"a" * MB
        yield b'"}'

    try:
        r = requests.post(base + "/api/v1/auth/token/", data=large(), timeout=30,
                          headers={"Content-Type": "application/json"})
    except requests.ConnectionError as exc:
        pytest.fail(f"no answer to a 3 MB chunked body: {exc!r}")
    assert_error_shape(r, 413, "too_large")


@pytest.mark.parametrize("length", [10_000, 20_000, 70_000])
def test_a_long_url_is_a_414(server, length):
    base, _ = server
    r = requests.get(base + "/api/v1/offers/?region=" + "E" * length, timeout=30)
    assert_error_shape(r, 414, "uri_too_long")


def test_an_oversized_header_is_a_431(server):
    base, _ = server
    r = requests.get(base + "/api/v1/offers/", headers={"X-Big": "a" * 20_000}, timeout=30)
    assert_error_shape(r, 431, "headers_too_large")


def test_a_malformed_multipart_body_is_a_400_with_a_reason(server, alice_token):
    base, _ = server
    for body in (b"garbage", b"--b\r\nContent-Disposition: form-data\r\n\r\nno end"):
        r = requests.post(base + "/api/v1/datasets/", data=body, timeout=30, headers={
            "Authorization": f"Token {alice_token}",
            "Content-Type": "multipart/form-data; boundary=b"})
        assert 400 <= r.status_code < 500, (r.status_code, r.content[:300])
        assert r.headers["Content-Type"].startswith("application/json"), r.content[:300]
        assert r.json()["detail"], r.content
