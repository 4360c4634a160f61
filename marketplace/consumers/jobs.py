"""A job's live socket, /ws/jobs/<id>/: its owner organization, the providers running it,
and staff. Everything sent carries a sequence number; a (re)connecting browser asks for what
it has not seen ("resync") and gets it from the database, then live updates."""

import json

from channels.db import database_sync_to_async

from ..selectors.live import history
from ..selectors.ownership import JobAction, jobs_for
from ..services import live
from .base import LiveConsumer


@database_sync_to_async
def _job_for(user, job_id: int):
    return jobs_for(user, JobAction.WATCH).filter(pk=job_id).first()


@database_sync_to_async
def _history(job, after_seq: int, after_log_seq: int) -> dict:
    return history(job, after_seq=after_seq, after_log_seq=after_log_seq)


class JobConsumer(LiveConsumer):
    job = None

    async def connect(self):
        user = self.scope.get("user")
        job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        self.job = await _job_for(user, job_id) if user is not None and user.is_authenticated else None
        if self.job is None:
            await self.close(code=4403)  # refused at the handshake (HTTP 403)
            return
        # Join before reading history: anything committed after this is delivered live,
        # anything before it comes from the database; the browser drops repeats by seq.
        await self.channel_layer.group_add(live.job_group(self.job.pk), self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if self.job is not None:
            await self.channel_layer.group_discard(live.job_group(self.job.pk), self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        """Browsers may only ask for a resync; anything else is answered with an error."""
        try:
            message = json.loads(text_data or "")
            if not isinstance(message, dict) or message.get("type") != "resync":
                raise ValueError
            after_seq = max(0, int(message.get("after_seq", 0)))
            after_log_seq = max(0, int(message.get("after_log_seq", 0)))
        except (ValueError, TypeError):
            await self.send(json.dumps({"type": "error", "message": "only resync messages are accepted"}))
            return
        await self.send(json.dumps(await _history(self.job, after_seq, after_log_seq)))

    async def job_update(self, event):
        await self.send(json.dumps(event["message"]))
