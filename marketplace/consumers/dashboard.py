"""/ws/dashboard/: a signed-in user's live summary (their organization's jobs, or its nodes,
and "account" when its money moved) and /ws/market/: offers' availability for anyone
browsing. Both only send. Pages that only follow the header balance connect with
`?summary=0`: no summary is read for them."""

import json
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from ..selectors.accounts import organization_of
from ..selectors.live import job_brief, node_brief
from ..services import live
from .base import LiveConsumer


@database_sync_to_async
def _summary(user, *, brief: bool) -> tuple[int | None, dict]:
    org = organization_of(user)
    if org is None or not brief:
        return (org.pk if org else None), {"type": "summary", "jobs": [], "nodes": []}
    jobs = [job_brief(j) for j in org.jobs.order_by("-created_at")[:50]] if org.is_consumer else []
    nodes = [node_brief(n) for n in org.nodes.order_by("name")[:500]] if org.is_provider else []
    return org.pk, {"type": "summary", "jobs": jobs, "nodes": nodes}


class _SendOnly(LiveConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(json.dumps({"type": "error", "message": "this socket only sends"}))

    async def live_update(self, event):
        await self.send(json.dumps(event["message"]))


class DashboardConsumer(_SendOnly):
    group = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        org_id, summary = await _summary(user, brief=query.get("summary") != ["0"])
        if org_id is not None:
            self.group = live.org_group(org_id)
            await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(json.dumps(summary))

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)


class MarketConsumer(_SendOnly):
    async def connect(self):
        await self.channel_layer.group_add(live.MARKET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(live.MARKET_GROUP, self.channel_name)
