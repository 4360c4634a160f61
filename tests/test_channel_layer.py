"""The batching pub/sub layer (webapp/channel_layer.py) against the real Redis: what
group_send_many publishes in one pipeline arrives as group_send's messages would, in order,
to every member of each group and to no one else."""

import asyncio

from channels.layers import get_channel_layer

from webapp.channel_layer import BatchingPubSubChannelLayer


async def _receive_all(layer, channel, n):
    return [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(n)]


def test_group_send_many_delivers_each_message_in_order_to_its_groups_members():
    layer = get_channel_layer()
    assert isinstance(layer, BatchingPubSubChannelLayer)

    async def scenario():
        a1, a2, b1, outsider = [await layer.new_channel() for _ in range(4)]
        for group, channel in (("t.a", a1), ("t.a", a2), ("t.b", b1)):
            await layer.group_add(group, channel)
        events = [("t.a", {"type": "x", "n": 1}), ("t.b", {"type": "x", "n": 2}),
                  ("t.a", {"type": "x", "n": 3}), ("t.nobody", {"type": "x", "n": 4})]
        await layer.group_send_many(events)
        got = {name: await _receive_all(layer, ch, want) for name, ch, want in
               (("a1", a1, 2), ("a2", a2, 2), ("b1", b1, 1))}
        # A barrier instead of a quiet period: the outsider's own group gets a message after
        # the batch, so its first message is that one unless part of the batch reached it.
        await layer.group_add("t.later", outsider)
        await layer.group_send("t.later", {"type": "x", "n": 5})
        outsider_first = await asyncio.wait_for(layer.receive(outsider), timeout=5)
        await layer.flush()
        return got, outsider_first

    got, outsider_first = asyncio.run(scenario())
    assert [m["n"] for m in got["a1"]] == [1, 3] and [m["n"] for m in got["a2"]] == [1, 3]
    assert [m["n"] for m in got["b1"]] == [2]
    assert outsider_first["n"] == 5
