"""What every channel shares: the message it sends, the outcome it reports, its configuration."""

from __future__ import annotations

from abc import ABC, abstractmethod
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


@dataclass(frozen=True)
class Outcome:
    """``sent``; ``failed`` with a reason (permanent); or ``retry`` (transient, try again)."""

    status: Status
    reason: str = ""


@dataclass(frozen=True)
class ChannelConfig:
    """A channel's settings, from an Airflow Connection (never from the plan YAML)."""

    url: str = ""
    token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""  # where file-based channels write for this run


class Channel(ABC):
    """A delivery channel. Implementations must be thread-safe: sends run concurrently."""

    name: ClassVar[str]

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config

    @abstractmethod
    def send(self, message: Message) -> Outcome:
        """Deliver one message; never raise for a delivery problem, return an Outcome."""

    def close(self) -> None:
        """Release connections or files."""
