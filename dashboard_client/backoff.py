"""Reconnect delays: exponential, capped, with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of `initial * factor**n`, at most `maximum`, each shortened by a
    random part of up to `jitter` of itself, so that clients dropped together
    (a server restart) do not all come back in the same instant."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5
    attempt: int = field(default=0, init=False)

    def next(self) -> float:
        delay = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return delay * (1 - self.jitter * random.random())

    def reset(self) -> None:
        self.attempt = 0
