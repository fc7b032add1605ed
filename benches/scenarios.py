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
VIRAL = "viral"  # viewers ramp up through the tier thresholds and back down, in steps

# The server's tier thresholds for ``viral`` (scaled down from 50K/40K/100K/80K, 10 s),
# passed to livecomments as LIVECOMMENTS_TIER_* settings.
TIER_KEYS = ("sampled_at", "sampled_below", "cdn_at", "cdn_below", "dwell_s", "sample_target")
TIER_ENV = {
    "sampled_at": "LIVECOMMENTS_TIER_SAMPLED_AT",
    "sampled_below": "LIVECOMMENTS_TIER_SAMPLED_BELOW",
    "cdn_at": "LIVECOMMENTS_TIER_CDN_AT",
    "cdn_below": "LIVECOMMENTS_TIER_CDN_BELOW",
    "dwell_s": "LIVECOMMENTS_TIER_MIN_DWELL_S",
    "sample_target": "LIVECOMMENTS_SAMPLE_TARGET_PER_S",
}
VIRAL_TIERS: dict[str, float] = {
    "sampled_at": 300,
    "sampled_below": 240,
    "cdn_at": 600,
    "cdn_below": 480,
    "dwell_s": 2.0,
    "sample_target": 20.0,
}


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
    # viral: ``viewers`` is the peak; the ramp starts and ends at ``ramp_from``, climbs in
    # ``ramp_steps`` equal steps, holds the peak ``ramp_hold`` more steps, and comes down.
    ramp_from: int = 0
    ramp_steps: int = 10
    ramp_hold: int = 3
    tiers: dict[str, float] = field(default_factory=dict)

    def with_overrides(self, **kw: object) -> Scenario:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})  # type: ignore[arg-type]

    def class_counts(self) -> dict[str, int]:
        """Viewers per behaviour class; rounding leftovers go to ``healthy``."""
        counts = {c: round(self.viewers * self.mix.get(c, 0.0)) for c in VIEWER_CLASSES[1:]}
        taken = sum(counts.values())
        if taken > self.viewers:
            raise ValueError(f"viewer mix {self.mix} adds up to more than all viewers")
        return {"healthy": self.viewers - taken, **counts}

    def ramp(self) -> list[tuple[float, int]]:
        """viral: (seconds after the start of the window, viewers wanted from then on)."""
        return ramp_schedule(self.ramp_from, self.viewers, self.duration_s, self.ramp_steps, self.ramp_hold)

    def tier_env(self) -> dict[str, str]:
        """The LIVECOMMENTS_* settings that carry ``tiers`` to the server."""
        out = {}
        for key, value in self.tiers.items():
            out[TIER_ENV[key]] = str(value) if key in ("dwell_s", "sample_target") else str(int(value))
        return out


def ramp_schedule(start: int, peak: int, duration_s: float, steps: int, hold: int) -> list[tuple[float, int]]:
    """Viewer levels in equal time slots: up from ``start`` to ``peak`` in ``steps`` steps,
    ``hold`` more slots at the peak, then down the same steps to ``start``."""
    steps = max(1, steps)
    start = max(0, min(start, peak))
    up = [round(start + (peak - start) * i / steps) for i in range(steps + 1)]
    levels = up + [peak] * max(0, hold) + up[-2::-1]
    slot = duration_s / len(levels)
    return [(round(i * slot, 3), n) for i, n in enumerate(levels)]


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
        Scenario(
            "viral",
            viewers=800,
            comments_per_s=200,
            kind=VIRAL,
            duration_s=72.0,
            backlog=0,
            publishers=4,
            ramp_from=50,
            ramp_steps=10,
            ramp_hold=3,
            tiers=dict(VIRAL_TIERS),
            description="50 -> 800 -> 50 viewers in steps through scaled-down tier thresholds "
            "(sampled at 300, cdn at 600), 200 comments/s; mode and deliveries/s over time",
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


def parse_tiers(text: str, base: dict[str, float] | None = None) -> dict[str, float]:
    """``"sampled_at=3,sampled_below=2,cdn_at=6,cdn_below=5,dwell_s=1"`` over ``base``
    (``dwell`` is accepted for ``dwell_s``); checks the thresholds the way the server does."""
    tiers = dict(base or VIRAL_TIERS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        name = "dwell_s" if name == "dwell" else name
        if not sep or name not in TIER_KEYS:
            raise ValueError(f"unknown tier setting {part!r} (one of {', '.join(TIER_KEYS)})")
        tiers[name] = float(value)
    check_tiers(tiers)
    return tiers


def check_tiers(t: dict[str, float]) -> None:
    sa, sb, ca, cb = (t[k] for k in ("sampled_at", "sampled_below", "cdn_at", "cdn_below"))
    if not (0 < sb <= sa and 0 < cb <= ca):
        raise ValueError("tiers: each *_below must be positive and at most its *_at")
    if ca < sa or cb < sb:
        raise ValueError("tiers: the cdn thresholds must not be below the sampled ones")
    if t["dwell_s"] < 0 or t["sample_target"] <= 0:
        raise ValueError("tiers: dwell_s must be >= 0 and sample_target > 0")
