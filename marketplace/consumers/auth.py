"""WebSocket authentication for API clients: `Authorization: Token <key>` on the handshake
(DRF tokens). Browsers are authenticated by their session (AuthMiddlewareStack)."""

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from rest_framework.authtoken.models import Token

from ..services.nodes import TOKEN_PREFIX


@database_sync_to_async
def _user_for(key: str):
    token = Token.objects.select_related("user").filter(key=key).first()
    return token.user if token is not None and token.user.is_active else None


class TokenAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, key = value.decode("latin-1").partition(" ")
                # An agent's node token (cmn_…) is never an API token: no lookup, no trip through
                # the process's shared sync thread on every agent handshake.
                if scheme.lower() == "token" and key.strip() and not key.strip().startswith(TOKEN_PREFIX):
                    user = await _user_for(key.strip())
                    if user is not None:
                        scope = dict(scope, user=user)
                break
        return await super().__call__(scope, receive, send)
