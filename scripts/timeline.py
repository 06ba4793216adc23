"""A timeline of failover and recovery, drawn from Envoy's JSON access log (the one
envoy/envoy.yaml writes: `scope`, `start_time`, `http.status`, `provider`, `tried`,
`failover_reason`, ...): requests per provider over time, the requests that failed over,
how long a provider that was moved on from stayed without a 2xx (its cooldown), and the
moment it answered again.

  python scripts/timeline.py ACCESS_LOG OUT.png

`make demo` draws one from its own access log at the end (scripts/demo.py).

What counts as a request line: a line that starts with '{' is JSON written by the access
log and must parse, with every field in REQUIRED; an object whose `scope` is not "request" is
left out. A line that does not start with '{' is not the access log's: the demo sends
Envoy's stdout and stderr to the same file, so an Envoy message (normally there are none,
Envoy's own log goes to --log-path) could land between request lines. Both kinds are
left out of the picture but never silently: `read_entries` returns their line numbers
and the command line prints them.

The series (`series`) need no matplotlib; only `draw` imports it."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

# The fields the series are computed from; a request line without one of them is an
# error, not a request left out.
REQUIRED = ("start_time", "http.status", "provider", "tried", "failover_reason")

# Bin widths a reader can take in at a glance; the narrowest one that keeps the chart
# at MAX_BINS bars or fewer is used. Few, wide bars: a bar per request or two would make
# steady traffic look ragged (the demo's background client sends 8 a second, 4 a bar).
NICE_BINS_S = (0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
MAX_BINS = 25


class TimelineError(ValueError):
    """Input the timeline cannot be drawn from; the message names the line."""


@dataclass(frozen=True)
class Entry:
    """One request line of the access log."""
    line: int
    t: float  # epoch seconds, when Envoy received the request
    status: int
    provider: str | None  # who answered; None when no provider did (Envoy's own reply)
    tried: tuple[str, ...]  # providers in the order they were asked, when more than one
    reason: str | None  # why the request moved on (failover_reason)

    @property
    def moved_on_from(self) -> tuple[str, ...]:
        """The providers this request was sent on from (a retry of the same provider
        counts once), in the order they were tried."""
        # With nobody answering (provider None) every provider tried failed.
        return tuple(dict.fromkeys(p for p in self.tried if p != self.provider))


@dataclass(frozen=True)
class Failover:
    t: float  # seconds since the first request
    tried: tuple[str, ...]
    provider: str | None
    reason: str | None
    line: int


@dataclass(frozen=True)
class Cooldown:
    """From the first request that moved on from `provider` to that provider's first
    2xx answer after it (`end`), or to the end of the log (`end` None)."""
    provider: str
    start: float  # seconds since the first request
    end: float | None
    reason: str | None

    @property
    def length(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True)
class Series:
    t0: float  # epoch seconds of the first request; every other time is relative to it
    duration: float  # seconds from the first request's start to the last one's
    bin_s: float
    bin_starts: list[float]
    providers: list[str | None]  # drawing order, bottom up: the primary first
    counts: dict[str | None, list[int]]  # requests answered per provider per bin
    failovers: list[Failover]
    cooldowns: list[Cooldown]
    primary: str | None  # the provider the first failover was tried on first
    requests: int

    def since(self, e: Entry) -> float:
        """When `e` started, in the series' seconds since the first request."""
        return _since(e.t, self.t0)

    @property
    def recoveries(self) -> list[tuple[float, str]]:
        """(seconds since the first request, provider) of each provider's first 2xx
        after it was moved on from."""
        return [(c.end, c.provider) for c in self.cooldowns if c.end is not None]


def _since(t: float, t0: float) -> float:
    # To the millisecond, the log's precision: epoch seconds differ by float noise
    # (0.1999998 for 0.2), which would put a request on a bin edge in the bin before,
    # or a recovery's own request before the recovery.
    return round(t - t0, 3)


def _empty(value) -> bool:
    # Envoy writes a value it does not have as null in json_format, and as "-" where
    # it formats text; either means "none".
    return value is None or value == "" or value == "-"


def _entry(obj: dict, line: int, where: str) -> Entry:
    missing = [f for f in REQUIRED if f not in obj]
    if missing:
        raise TimelineError(f"{where}: no {', '.join(missing)} field{'s' if len(missing) > 1 else ''}"
                            " (the access log format needs them, see envoy/envoy.yaml)")
    raw_t = obj["start_time"]
    if _empty(raw_t) or isinstance(raw_t, bool) or not isinstance(raw_t, (str, int, float)):
        raise TimelineError(f"{where}: start_time is {raw_t!r}, not epoch seconds")
    try:
        t = float(raw_t)
    except ValueError:
        raise TimelineError(f"{where}: start_time is {raw_t!r}, not epoch seconds") from None
    if not math.isfinite(t) or t <= 0:
        raise TimelineError(f"{where}: start_time is {raw_t!r}, not epoch seconds")
    status = obj["http.status"]
    if isinstance(status, bool) or not isinstance(status, int):
        raise TimelineError(f"{where}: http.status is {status!r}, not a number")
    provider = obj["provider"]
    if not _empty(provider) and not isinstance(provider, str):
        raise TimelineError(f"{where}: provider is {provider!r}, not a name")
    tried_raw = obj["tried"]
    if _empty(tried_raw):
        tried: tuple[str, ...] = ()
    elif isinstance(tried_raw, str):
        tried = tuple(p.strip() for p in tried_raw.split(","))
        if any(not p for p in tried):
            raise TimelineError(f"{where}: tried is {tried_raw!r}, an empty name in the list")
    else:
        raise TimelineError(f"{where}: tried is {tried_raw!r}, not a comma-separated list")
    reason = obj["failover_reason"]
    if not _empty(reason) and not isinstance(reason, str):
        raise TimelineError(f"{where}: failover_reason is {reason!r}, not a word")
    return Entry(line=line, t=t, status=status, provider=None if _empty(provider) else provider,
                 tried=tried, reason=None if _empty(reason) else reason)


def read_entries(lines: Iterable[str], source: str = "access log") -> tuple[list[Entry], list[int]]:
    """The request lines of an access log, and the numbers (from 1) of the lines left
    out: lines that are not JSON objects (not the access log's, see the module's
    docstring), blank lines and objects whose scope is not "request". A line that
    starts with '{' but does not parse, or lacks a field, raises TimelineError naming
    `source` and the line."""
    entries, left_out = [], []
    for n, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text.startswith("{"):
            left_out.append(n)
            continue
        where = f"{source} line {n}"
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise TimelineError(f"{where}: not JSON ({e}): {text[:120]}") from None
        if not isinstance(obj, dict):
            raise TimelineError(f"{where}: not a JSON object: {text[:120]}")
        if "scope" not in obj:
            raise TimelineError(f"{where}: no scope field (request lines say \"scope\": \"request\")")
        if obj["scope"] != "request":
            left_out.append(n)
            continue
        entries.append(_entry(obj, n, where))
    return entries, left_out


def read_log(path: str | Path) -> tuple[list[Entry], list[int]]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TimelineError(f"cannot read {path}: {e.strerror}") from None
    return read_entries(text.splitlines(), str(path))


def choose_bin(duration: float) -> float:
    for width in NICE_BINS_S:
        if math.floor(duration / width) + 1 <= MAX_BINS:
            return width
    return float(math.ceil(duration / (MAX_BINS - 1)))


def series(entries: Sequence[Entry], bin_s: float | None = None) -> Series:
    """Everything the picture shows, from the request lines (in any order: Envoy logs a
    request when it ends, the timeline places it where it started)."""
    if not entries:
        raise TimelineError("no request lines in the access log")
    if bin_s is not None and not bin_s > 0:
        raise TimelineError(f"bin width {bin_s!r}: must be more than 0 seconds")
    ordered = sorted(entries, key=lambda e: e.t)  # stable: equal times keep log order
    t0 = ordered[0].t

    def since(e: Entry) -> float:
        return _since(e.t, t0)

    duration = since(ordered[-1])
    width = choose_bin(duration) if bin_s is None else bin_s
    nbins = math.floor(duration / width) + 1

    failovers = [Failover(t=since(e), tried=e.tried, provider=e.provider, reason=e.reason, line=e.line)
                 for e in ordered if len(e.tried) > 1]
    primary = failovers[0].tried[0] if failovers else None

    # Drawing order, bottom up: the primary, then the others in the order requests
    # tried them, then whoever else answered, then "nobody".
    order: list[str | None] = [primary] if primary else []
    for e in ordered:
        for p in (*e.tried, e.provider):
            if p is not None and p not in order:
                order.append(p)
    answered = {e.provider for e in ordered}
    providers = [p for p in order if p in answered] + ([None] if None in answered else [])

    counts: dict[str | None, list[int]] = {p: [0] * nbins for p in providers}
    for e in ordered:
        # min(): the last request may sit exactly on the end of the last bin.
        counts[e.provider][min(int(since(e) / width), nbins - 1)] += 1

    # Spans in the order they began (for spans one request began, the order it tried
    # its providers in), whenever they ended.
    began: list[tuple[int, Cooldown]] = []
    cooling: dict[str, tuple[int, float, str | None]] = {}
    opened = 0
    for e in ordered:
        if e.provider in cooling and 200 <= e.status < 300:
            k, start, reason = cooling.pop(e.provider)
            began.append((k, Cooldown(e.provider, start, since(e), reason)))
        for p in e.moved_on_from:
            # A later failover on a provider still without a 2xx is inside the same span.
            if p not in cooling:
                cooling[p] = (opened, since(e), e.reason)
                opened += 1
    began += [(k, Cooldown(p, start, None, reason)) for p, (k, start, reason) in cooling.items()]
    cooldowns = [c for _, c in sorted(began, key=lambda kc: kc[0])]

    return Series(t0=t0, duration=duration, bin_s=width, bin_starts=[i * width for i in range(nbins)],
                  providers=providers, counts=counts, failovers=failovers, cooldowns=cooldowns,
                  primary=primary, requests=len(ordered))


def summary(s: Series) -> str:
    parts = [f"{s.requests} requests over {s.duration:.1f} s",
             f"{len(s.failovers)} failover{'' if len(s.failovers) == 1 else 's'}"]
    for c in s.cooldowns:
        if c.end is None:
            parts.append(f"{c.provider} without a 2xx from {c.start:.1f} s to the end of the log")
        else:
            parts.append(f"{c.provider} cooled down from {c.start:.1f} s and was back at {c.end:.1f} s"
                         f" ({c.length:.1f} s)")
    return "; ".join(parts)


def _label(provider: str | None, primary: str | None) -> str:
    if provider is None:
        return "no provider answered"
    return f"{provider} (primary)" if provider == primary else provider


def draw(s: Series, out: str | Path, title: str | None = None) -> Path:
    """Writes the picture as a PNG to `out` and returns its path."""
    import matplotlib
    matplotlib.use("Agg")  # no display: a file is all the demo and CI want
    import matplotlib.pyplot as plt

    out = Path(out)
    # Fixed colours by role, so every picture reads the same: the primary blue, the
    # fallbacks orange and on, "nobody answered" grey; red is kept for failovers.
    palette = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    colours = {}
    for i, p in enumerate(q for q in s.providers if q is not None):
        colours[p] = palette[i % len(palette)]
    colours[None] = "#7f7f7f"

    fig, ax = plt.subplots(figsize=(11, 5.4), dpi=110)
    x_end = len(s.bin_starts) * s.bin_s
    # The legend in reading order: who answered, then what happened (gathered here,
    # matplotlib's own order puts the bars last).
    legend: list[tuple[object, str]] = []
    bottoms = [0] * len(s.bin_starts)
    for p in s.providers:
        bars = ax.bar(s.bin_starts, s.counts[p], width=s.bin_s * 0.92, align="edge", bottom=bottoms,
                      color=colours[p], zorder=2)
        legend.append((bars, _label(p, s.primary)))
        bottoms = [b + c for b, c in zip(bottoms, s.counts[p])]
    peak = max(bottoms)
    # Headroom above the tallest bar for the failover markers and the span labels.
    top = peak * 1.5 + 1
    ax.set_ylim(0, top)
    # A little room left of 0: the first request is often the first failover, and its
    # marker would be cut in half.
    ax.set_xlim(-0.015 * x_end, x_end)

    # Past a few spans their labels would run into each other; the legend still says
    # what the shading and the lines are.
    label_spans = len(s.cooldowns) <= 6
    span_handle = back_handle = None
    for c in s.cooldowns:
        end = x_end if c.end is None else c.end
        who = "primary" if c.provider == s.primary else c.provider
        span = ax.axvspan(c.start, end, color="#d62728", alpha=0.10, zorder=0)
        if span_handle is None:
            span_handle = (span, f"cooldown: {who} skipped until its first 2xx")
        if label_spans:
            why = f" ({c.reason})" if c.reason else ""
            text = (f"{who} cooling down{why}: {c.length:.1f} s" if c.end is not None
                    else f"{who}{why}: no 2xx until the log ends")
            ax.text((c.start + end) / 2, top * 0.93, text, ha="center", va="top", fontsize=10,
                    color="#a01a1a", fontweight="bold", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="none", alpha=0.8))
        if c.end is not None:
            line = ax.axvline(c.end, color="#2ca02c", lw=2.2, ls="--", zorder=4)
            if back_handle is None:
                back_handle = (line, f"{who} back: its first 2xx after the cooldown")
            if label_spans:
                ax.text(c.end, top * 0.80, f" {who} back\n at {c.end:.1f} s", ha="left", va="top",
                        fontsize=10, color="#1d6b1d", fontweight="bold", zorder=5)

    # One marker per bin with failovers, just above that bin's bar, with a count when
    # more than one request failed over in it.
    per_bin: dict[int, list[Failover]] = {}
    for f in s.failovers:
        per_bin.setdefault(min(int(f.t / s.bin_s), len(s.bin_starts) - 1), []).append(f)
    fail_handle = None
    for b, fs in sorted(per_bin.items()):
        x = fs[0].t
        y = bottoms[b] + peak * 0.06 + 0.3
        marker = ax.scatter([x], [y], marker="v", s=90, color="#d62728", edgecolor="black", linewidth=0.6,
                            zorder=6)
        if fail_handle is None:
            fail_handle = (marker, "failover: a request sent on to the next provider")
        reasons = sorted({f.reason for f in fs if f.reason})
        note = (f"×{len(fs)} " if len(fs) > 1 else "") + ", ".join(reasons)
        if note and len(per_bin) <= 12:
            ax.annotate(note, (x, y), xytext=(0, 8), textcoords="offset points", ha="center",
                        fontsize=8.5, color="#a01a1a", zorder=6)

    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel(f"requests per {s.bin_s:g} s")
    ax.set_title(title or "Requests per provider: failover, cooldown and recovery (from Envoy's access log)")
    ax.grid(axis="y", alpha=0.3, zorder=1)
    ax.yaxis.get_major_locator().set_params(integer=True)
    # Below the chart: beside it the legend takes a third of the width from the bars.
    legend += [h for h in (fail_handle, span_handle, back_handle) if h is not None]
    ax.legend([h for h, _ in legend], [label for _, label in legend], loc="upper center",
              bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/timeline.py ACCESS_LOG OUT.png", file=sys.stderr)
        return 2
    try:
        entries, left_out = read_log(argv[0])
        s = series(entries)
    except TimelineError as e:
        print(f"timeline: {e}", file=sys.stderr)
        return 1
    if left_out:
        shown = ", ".join(map(str, left_out[:10])) + (", ..." if len(left_out) > 10 else "")
        print(f"timeline: left out {len(left_out)} line(s) that are not request lines"
              f" (not JSON objects, or scope not \"request\"): {shown}", file=sys.stderr)
    path = draw(s, argv[1])
    print(f"wrote {path}: {summary(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
