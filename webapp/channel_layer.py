"""channels-redis's pub/sub layer, plus one call that publishes many group messages in one
round trip.

The layer publishes each group message under its shard's lock and waits for Redis's reply
before the next: the agent ingest's fifty broadcasts a batch were fifty round trips one
after the other, the largest share of the server's event loop at 1,000 progress messages
a second (py-spy). `group_send_many` sends them as one pipeline per shard, under the same
lock. It leans on the layer's own helpers (group channel names, shards), which is why
channels-redis is pinned below 5 and tests/test_channel_layer.py checks delivery.
"""

from collections import defaultdict

from channels_redis.pubsub import RedisPubSubChannelLayer


class BatchingPubSubChannelLayer(RedisPubSubChannelLayer):
    async def group_send_many(self, events: list[tuple[str, dict]]) -> None:
        """`group_send` for each (group, message), in order within each shard."""
        layer = self._get_layer()
        by_shard = defaultdict(list)
        for group, message in events:
            name = layer._get_group_channel_name(group)
            by_shard[layer._get_shard(name)].append((name, self.serialize(message)))
        for shard, items in by_shard.items():
            async with shard._lock:
                shard._ensure_redis()
                async with shard._redis.pipeline(transaction=False) as pipe:
                    for name, data in items:
                        pipe.publish(name, data)
                    await pipe.execute()
