"""The embedded demo's chain: one in-process EVM (eth-tester, py-evm) served over JSON-RPC,
so that the demo's web server and Celery worker (separate processes) share it. Development
only. Given a folder, the chain is kept there (`persist`) and a restart of `make demo`
finds its escrows again; without one it lives in memory."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from web3 import Web3
from web3._utils.encoding import Web3JsonEncoder

from .client import _LockedTesterProvider
from .persist import PersistentTesterProvider

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


class ChainServer(ThreadingHTTPServer):
    provider: _LockedTesterProvider

    def close(self) -> None:
        """Stop serving and, for a chain on disk, write what is pending and unlock its folder."""
        self.shutdown()
        self.server_close()
        if isinstance(self.provider, PersistentTesterProvider):
            self.provider.close()


def serve(host: str = "127.0.0.1", port: int = 0, *, folder: Path | None = None) -> tuple[ChainServer, str]:
    """Start the chain in a background thread; returns the server and its URL. With `folder`
    the chain is the one stored there (a new one if there is none)."""
    provider = PersistentTesterProvider(folder) if folder is not None else _LockedTesterProvider()
    handler = type("Handler", (_Handler,), {"chain": Web3(provider)})
    server = ChainServer((host, port), handler)
    server.provider = provider
    threading.Thread(target=server.serve_forever, name="devchain", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"
