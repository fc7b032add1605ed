"""Named load shapes (presets) from the design document, scaled to a 2-core machine.

A preset fixes the shape of the load; every number can be overridden from the command
line (``--viewers``, ``--rate``, ``--scale``, ``--mix`` ...), which is how the test
suite runs each preset tiny.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

VIEWER_CLASSES = ("healthy", "slow", "stalled", "flapping")

# What a run does after the viewers are connected.
STEADY = "steady"  # connect everyone, post at a rate, measure a window
JOIN_STORM = "join-storm"  # preload a backlog, then connect everyone within a short window
RECONNECT_STORM = "reconnect-storm"  # steady, and halfway through everyone drops and resumes


@dataclass(frozen=True)
class Scenario:
    """One benchmark preset: how many viewers, how they behave, how fast comments come."""

    name: str
    viewers: int
    comments_per_s: float
    kind: str = STEADY
    duration_s: float = 20.0
    # Fractions of the viewers per behaviour; the rest are healthy.
    mix: dict[str, float] = field(default_factory=dict)
    backlog: int = 50
    join_window_s: float = 2.0
    publishers: int = 1  # keep-alive publisher connections, each its own user
    description: str = ""

    def with_overrides(self, **kw: object) -> Scenario:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})  # type: ignore[arg-type]

    def class_counts(self) -> dict[str, int]:
        """Viewers per behaviour class; rounding leftovers go to ``healthy``."""
        counts = {c: round(self.viewers * self.mix.get(c, 0.0)) for c in VIEWER_CLASSES[1:]}
        taken = sum(counts.values())
        if taken > self.viewers:
            raise ValueError(f"viewer mix {self.mix} adds up to more than all viewers")
        return {"healthy": self.viewers - taken, **counts}


PRESETS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "small",
            viewers=1_000,
            comments_per_s=10,
            description="P3: 1,000 viewers, 10 comments/s; broadcast latency p99",
        ),
        Scenario(
            "popular",
            viewers=2_000,
            comments_per_s=500,
            description="P1/P2: 2,000 viewers, 500 comments/s; CPU per delivery, latency",
        ),
        Scenario(
            "idle",
            viewers=20_000,
            comments_per_s=1,
            description="P4: 20,000 viewers, 1 comment/s; RSS per connection",
        ),
        Scenario(
            "slow-consumers",
            viewers=2_000,
            comments_per_s=500,
            mix={"stalled": 0.2, "slow": 0.1},
            description="P6: popular with 20% stalled and 10% slow viewers",
        ),
        Scenario(
            "join-storm",
            viewers=5_000,
            comments_per_s=10,
            kind=JOIN_STORM,
            backlog=50,
            join_window_s=2.0,
            duration_s=30.0,
            description="P7: 5,000 viewers connect within 2 s; time until all have a 50-comment backlog",
        ),
        Scenario(
            "posting",
            viewers=100,
            comments_per_s=1_000,
            publishers=8,
            description="P5: 1,000 comments/s from 8 keep-alive publishers; post latency p99",
        ),
        Scenario(
            "reconnect-storm",
            viewers=2_000,
            comments_per_s=50,
            kind=RECONNECT_STORM,
            description="all viewers drop at once and resume with Last-Event-ID",
        ),
    )
}


def parse_mix(text: str) -> dict[str, float]:
    """``"stalled=0.2,slow=0.1"`` -> ``{"stalled": 0.2, "slow": 0.1}``."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in VIEWER_CLASSES[1:]:
            raise ValueError(f"unknown viewer class {name!r} (one of {', '.join(VIEWER_CLASSES[1:])})")
        frac = float(value)
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"fraction for {name} must be within 0..1")
        mix[name] = frac
    return mix
