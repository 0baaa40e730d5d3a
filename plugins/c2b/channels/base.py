"""What every channel shares: the message it sends, the outcome it reports, its configuration."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Status = Literal["sent", "failed", "retry"]


@dataclass(frozen=True)
class Message:
    """One touch for one user. ``idempotency_key`` is derived from (plan, run, touch, uid)."""

    idempotency_key: str
    plan_id: str
    run_id: str
    touch: str
    channel: str
    uid: str
    variant: str
    text: str
    assets: dict[str, str] = field(default_factory=dict)
    offer: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.idempotency_key, "plan": self.plan_id, "run": self.run_id,
            "touch": self.touch, "channel": self.channel, "uid": self.uid, "variant": self.variant,
            "text": self.text, "assets": self.assets, "offer": self.offer,
        }


_new = object.__new__
_setattr = object.__setattr__


def new_message(idempotency_key: str, plan_id: str, run_id: str, touch: str, channel: str, uid: str,
                variant: str, text: str, assets: dict[str, str], offer: dict[str, Any] | None) -> Message:
    """Return ``Message(...)`` of these fields (all given), built the cheap way: a frozen
    dataclass's ``__init__`` sets its ten fields one ``object.__setattr__`` call each (per message,
    on the delivery hot path); this sets the instance's ``__dict__`` in one call. Equal to
    ``Message(...)`` in every respect (tests/unit/test_message_fast_paths.py)."""
    m = _new(Message)
    _setattr(m, "__dict__", {
        "idempotency_key": idempotency_key, "plan_id": plan_id, "run_id": run_id, "touch": touch,
        "channel": channel, "uid": uid, "variant": variant, "text": text, "assets": assets, "offer": offer})
    return m


@dataclass(frozen=True)
class Outcome:
    """``sent``; ``failed`` with a reason (permanent); or ``retry`` (transient, try again)."""

    status: Status
    reason: str = ""


@dataclass(frozen=True)
class ChannelConfig:
    """A channel's settings, from an Airflow Connection (never from the plan YAML).

    ``extra`` keys every channel understands: ``batch_size`` (messages per request, 1 = single
    sends), ``timeout`` (seconds), ``rate_limit`` (messages/s shared by all workers using this
    connection) and ``burst``.
    """

    url: str = ""
    token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""  # where file-based channels write for this run
    conn_id: str = ""  # the Airflow Connection id: names the shared rate limit
    redis: Any = field(default=None, compare=False, repr=False)  # for channels that write to Redis


def flag(extra: dict[str, Any], key: str, default: bool = False) -> bool:
    """Read a yes/no connection extra (``true``/``false``, also as a string or 0/1)."""
    value = extra.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"connection extra {key!r} must be true or false, got {value!r}")


def _positive(extra: dict[str, Any], key: str, default: float | None) -> float | None:
    value = extra.get(key, default)
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"connection extra {key!r} must be a number, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"connection extra {key!r} must be positive, got {value!r}")
    return number


class Channel(ABC):
    """A delivery channel. Implementations must be thread-safe: sends run concurrently.

    The delivery loop calls :meth:`asend_batch` on an asyncio loop; a blocking channel needs only
    :meth:`send` (and :meth:`send_batch` for batches), which the default runs on a thread pool.

    A channel that can take many messages per request overrides :meth:`send_batch` and sets
    ``max_batch``; ``batch_size`` (from the connection's extras) picks the size actually used.

    The class attributes are the one place the rest of the engine learns a channel's facts from
    (plan validation, the Airflow resource resolution, the delivery loop): its name, the Airflow
    Connection a touch uses when it names none, whether it needs one at all, and its batch sizes.
    """

    name: ClassVar[str]
    default_connection: ClassVar[str | None] = None  # Airflow Connection id when the touch names none
    needs_connection: ClassVar[bool] = True  # False: works without one (files, the c2b_redis store)
    max_batch: ClassVar[int] = 1  # largest batch the channel can send in one request
    default_batch: ClassVar[int] = 1
    # Longest message text the channel carries: a longer rendered message is recorded failed with
    # the reason, never sent (c2b.plan.template_limits). Channels with a real limit override it.
    max_text_chars: ClassVar[int] = 10_000

    @classmethod
    def supports_batches(cls) -> bool:
        """Return whether the channel can send several messages in one request."""
        return cls.max_batch > 1

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        size = int(_positive(config.extra, "batch_size", self.default_batch) or 1)
        if size > self.max_batch:
            raise ValueError(f"channel {self.name!r} sends at most {self.max_batch} messages per request; "
                             f"batch_size {size} is too big")
        self.batch_size = size
        self.timeout = float(_positive(config.extra, "timeout", 10.0) or 10.0)
        self.rate_limit = _positive(config.extra, "rate_limit", None)
        self.burst = float(config.extra.get("burst", 0) or 0)

    @abstractmethod
    def send(self, message: Message) -> Outcome:
        """Deliver one message; never raise for a delivery problem, return an Outcome."""

    def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """Deliver several messages in one request; one Outcome per message, in order."""
        return [self.send(m) for m in messages]

    async def asend_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """Deliver from the delivery loop's event loop: one Outcome per message, in order.

        This default runs the blocking :meth:`send_batch` (or :meth:`send`) on the loop's thread
        pool; a channel with a native asyncio client (the HTTP ones) overrides it.
        """
        loop = asyncio.get_running_loop()
        if len(messages) == 1:
            return [await loop.run_in_executor(None, self.send, messages[0])]
        return await loop.run_in_executor(None, self.send_batch, messages)

    async def aclose(self) -> None:  # noqa: B027 (a no-op unless the channel holds loop resources)
        """Release what :meth:`asend_batch` holds in the event loop (called from that loop)."""

    def close(self) -> None:  # noqa: B027 (a no-op unless the channel holds something)
        """Release connections or files."""
