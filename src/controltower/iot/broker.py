"""The embedded MQTT broker (amqtt): device login by id and token, the per-device topic ACL, and hooks
that hand published messages and connection changes to the hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker, BrokerContext
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from controltower.iot import topics
from controltower.iot.hub import Hub

log = logging.getLogger("controltower.iot.broker")

SESSION_QUEUE_MAX = 1  # a client's received messages waiting for the broker, before it acknowledges no more
HUB_FULL_RETRY_S = 0.005


class DevicePlugin(BaseAuthPlugin, BaseTopicPlugin):
    """Authenticates devices, enforces `ct/d/{own id}/...`, and feeds the hub."""

    @dataclass
    class Config:
        hub: Any = None

    def __init__(self, context: BrokerContext) -> None:
        super().__init__(context)
        self.hub: Hub = self.config.hub
        self.broker_context = context

    async def authenticate(self, *, session: Session) -> bool | None:
        try:
            ok = await asyncio.to_thread(self.hub.check_device, session.username, session.password)
        except Exception:
            log.exception("MQTT login check failed for %r", session.username)
            return False
        if not ok:
            log.info("MQTT login refused for username %r", session.username)
        return ok

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or topic is None:
            return False
        return bool(session.username) and topics.may_access(session.username, topic)

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        _bound_delivery_queue(client_session)
        if client_session.username:
            self.hub.connected(client_session.username)

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Session) -> None:
        if client_session.username:
            self.hub.disconnected(client_session.username)

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        session = self.broker_context.get_session(client_id)
        if session is None or not session.username:
            return
        commands_topic = topics.topic(session.username, topics.COMMANDS)
        if _filter_matches(topic, commands_topic):
            self.hub.commands_ready(session.username)



class _OrderedDeliveryQueue(asyncio.Queue):  # type: ignore[type-arg]
    """A session's incoming messages: `put` (QoS 1 and 2) waits while SESSION_QUEUE_MAX are queued, the waiting
    ones strictly in arrival order; `put_nowait` (QoS 0) never refuses.

    amqtt gives every incoming PUBLISH a task of its own; with asyncio.Queue's own bound, a task arriving just
    as a slot frees takes it ahead of the one woken for it, and a file's chunks reach the hub out of turn."""

    _turn: asyncio.Lock
    _taken: asyncio.Future[None] | None

    async def put(self, item: Any) -> None:
        async with self._turn:  # asyncio.Lock is fair: later tasks wait behind earlier ones
            while self.qsize() >= SESSION_QUEUE_MAX:
                self._taken = asyncio.get_running_loop().create_future()
                await self._taken
            self.put_nowait(item)

    def get_nowait(self) -> Any:  # asyncio.Queue.get ends here too
        item = super().get_nowait()
        if self._taken is not None and not self._taken.done():
            self._taken.set_result(None)
        return item


def _bound_delivery_queue(session: Session) -> None:
    """amqtt queues a client's incoming messages without limit and acknowledges each once queued. Bounded, a
    client whose messages wait (the hub is full) gets no more acknowledgements: its in-flight window fills, and
    the rest stay on the device, as QoS 1 means, instead of piling up here. The queue object stays the same
    (amqtt's delivery loop may already be waiting on it); only its class changes."""
    queue = session.delivered_message_queue
    if type(queue) is asyncio.Queue:
        queue._turn = asyncio.Lock()  # type: ignore[attr-defined]
        queue._taken = None  # type: ignore[attr-defined]
        queue.__class__ = _OrderedDeliveryQueue


def _filter_matches(topic_filter: str, topic: str) -> bool:
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or (part != "+" and part != t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)


class FleetBroker(Broker):
    """amqtt's broker, made to scale with the number of devices, handing what devices publish to the hub.

    amqtt matches every published message against every subscription, and on each connect offers the
    retained messages of every subscription of every client to the newcomer: with a thousand devices,
    each subscribed to its own commands, both dominate. Here a message nobody subscribed to (all device
    telemetry) skips the broadcast, found with a set of exact filters plus the few wildcard ones; and a
    connecting client is offered retained messages only for its own subscriptions (amqtt's loop also
    showed one device's retained status to another whose filter matched it).
    """

    def __init__(self, config: dict[str, Any], hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self._exact_filters: set[str] = set()
        self._wildcard_filters: set[str] = set()

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        code = await super().add_subscription(subscription, session)
        topic_filter = subscription[0]
        if self._subscriptions.get(topic_filter):
            self._index(topic_filter).add(topic_filter)
        return code

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        deleted = super()._del_subscription(a_filter, session)
        if not self._subscriptions.get(a_filter):
            self._index(a_filter).discard(a_filter)
        return deleted

    def _index(self, topic_filter: str) -> set[str]:
        wildcard = "+" in topic_filter or "#" in topic_filter
        return self._wildcard_filters if wildcard else self._exact_filters

    def _has_subscriber(self, topic: str) -> bool:
        return topic in self._exact_filters or any(self._matches(topic, f) for f in list(self._wildcard_filters))

    async def _broadcast_message(
        self, session: Session | None, topic: str | None, data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        # Awaited in the publishing client's delivery loop (unlike amqtt's broadcast event, fired without
        # waiting): while the hub is full, this client's messages wait here, in order. A last will comes here
        # too, unchecked by amqtt: hence the ACL again.
        device = session.username if session is not None else None
        if device and topic is not None and topics.may_access(device, topic):
            while not self.hub.has_room():
                await asyncio.sleep(HUB_FULL_RETRY_S)
            self.hub.message(topic, bytes(data or b""), "mqtt")
        if topic is not None and not self._has_subscriber(topic):
            return
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter = subscription[0]
        if not any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, ())):
            return
        if topic_filter in self._exact_filters and topic_filter not in self._retained_messages:
            return
        await super()._publish_retained_messages_for_subscription(subscription, session)


class EmbeddedBroker:
    """amqtt on CT_MQTT_HOST:CT_MQTT_PORT in the server's event loop."""

    name = "embedded"

    def __init__(self, hub: Hub, host: str, port: int) -> None:
        self.hub = hub
        self.host = host
        self.port = port
        self._broker: Broker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": -1}},
            "plugins": {f"{__name__}.DevicePlugin": {"hub": self.hub}},
        }

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for noisy in ("transitions", "amqtt"):  # a log line per session state change, at INFO
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._broker = FleetBroker(self.config(), self.hub)
        await self._broker.start()
        log.warning("MQTT broker listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self._broker.shutdown()
            self._broker = None

    def is_up(self) -> bool:
        return self._broker is not None and self._broker.transitions.state == "started"

    def disconnect_device(self, device_id: str) -> int:
        broker, loop = self._broker, self._loop
        if broker is None or loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._close_sessions(broker, device_id), loop).result(timeout=10)

    @staticmethod
    async def _close_sessions(broker: Broker, device_id: str) -> int:
        """Close the connections; the broker then cleans up as for a dropped link (last will included)."""
        closed = 0
        for session, handler in list(broker.sessions.values()):
            writer = getattr(handler, "writer", None)
            if session.username == device_id and writer is not None:
                with contextlib.suppress(Exception):
                    await writer.close()
                closed += 1
        return closed

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        broker, loop = self._broker, self._loop
        if broker is None or loop is None:
            raise RuntimeError("the embedded MQTT broker is not running")
        coro = broker.internal_message_broadcast(topic, payload, qos)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(coro)
        else:
            asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)
