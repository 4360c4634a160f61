"""The embedded demo's chain: one in-process EVM (eth-tester, py-evm) served over JSON-RPC,
so that the demo's web server and Celery worker (separate processes) share it. Development
only: it keeps everything in memory, and `make demo` deploys the contracts on each start."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from web3 import Web3
from web3._utils.encoding import Web3JsonEncoder

from .client import _LockedTesterProvider

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    chain: Web3  # answers go through web3's eth-tester middleware: JSON-RPC field names

    def do_POST(self):  # noqa: N802 (http.server's naming)
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
            calls = body if isinstance(body, list) else [body]
            answers = [self._call(c) for c in calls]
            out = json.dumps(answers if isinstance(body, list) else answers[0], cls=Web3JsonEncoder).encode()
            self.send_response(200)
        except ValueError:
            out = json.dumps({"jsonrpc": "2.0", "id": None,
                              "error": {"code": -32700, "message": "parse error"}}).encode()
            self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def _call(self, call) -> dict:
        if not isinstance(call, dict) or not isinstance(call.get("method"), str):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request"}}
        try:
            with _LockedTesterProvider._lock:
                answer = dict(self.chain.manager._make_request(call["method"], call.get("params") or []))
        except Exception as exc:  # the EVM refused it: an error answer, as a node gives
            answer = {"error": {"code": -32000, "message": str(exc)[:500]}}
        answer.update(jsonrpc="2.0", id=call.get("id"))
        return answer

    def log_message(self, format, *args):  # noqa: A002
        log.debug(format, *args)


def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start the chain in a background thread; returns the server and its URL."""
    handler = type("Handler", (_Handler,), {"chain": Web3(_LockedTesterProvider())})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="devchain", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"
