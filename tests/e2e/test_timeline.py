"""scripts/timeline.py, the demo's picture: the series it draws, computed from
synthetic access-log lines, and the errors it gives on lines it cannot read. No Envoy;
the one drawing test needs matplotlib (installed by scripts/setup.sh)."""

import importlib.util
import json
import subprocess
import sys

import pytest
from harness import ROOT

_spec = importlib.util.spec_from_file_location("timeline", ROOT / "scripts" / "timeline.py")
timeline = importlib.util.module_from_spec(_spec)
# Registered before it runs: dataclasses look their module up in sys.modules.
sys.modules["timeline"] = timeline
_spec.loader.exec_module(timeline)

T0 = 1796035906.135  # epoch seconds, as Envoy's %START_TIME(%s.%3f)% writes them


def line(at, provider, status=200, tried=None, reason=None, **extra):
    """An access log line as envoy/envoy.yaml writes it, `at` seconds after T0."""
    obj = {"attempts": None, "control": None, "duration_ms": 1, "endpoint": "127.0.0.1:8001",
           "failover_reason": reason, "hedge": None, "http.status": status, "path": "/v1/chat/completions",
           "provider": provider, "scope": "request", "start_time": f"{T0 + at:.3f}", "stream": None,
           "tried": tried, "upstream_cluster": "c"}
    obj.update(extra)
    return json.dumps(obj)


def entries(lines):
    got, left_out = timeline.read_entries(lines)
    assert left_out == []
    return got


def demo_like():
    """The demo's shape: the primary fails at 0 s, a request every 0.25 s goes to the
    fallback until the primary answers again at 5.25 s, then stays there."""
    lines = [line(0.0, "fallback", tried="primary,fallback", reason="rate_limited")]
    lines += [line(0.25 * i, "fallback") for i in range(1, 21)]  # 0.25 .. 5.0
    lines += [line(5.25 + 0.25 * i, "primary") for i in range(0, 5)]  # 5.25 .. 6.25
    return lines


def test_series_of_a_failover_cooldown_and_recovery():
    s = timeline.series(entries(demo_like()), bin_s=1.0)
    assert s.t0 == pytest.approx(T0) and s.duration == pytest.approx(6.25)
    assert s.requests == 26 and s.bin_s == 1.0
    assert s.bin_starts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # The primary first (it is tried first), although the fallback answered first.
    assert s.providers == ["primary", "fallback"] and s.primary == "primary"
    # Bin 0: the failover and 0.25, 0.5, 0.75; bin 5: 5.0 on the fallback, 5.25..5.75 back.
    assert s.counts["fallback"] == [4, 4, 4, 4, 4, 1, 0]
    assert s.counts["primary"] == [0, 0, 0, 0, 0, 3, 2]
    assert [(f.t, f.tried, f.provider, f.reason) for f in s.failovers] == \
        [(0.0, ("primary", "fallback"), "fallback", "rate_limited")]
    assert len(s.cooldowns) == 1
    c = s.cooldowns[0]
    assert (c.provider, c.start, c.reason) == ("primary", 0.0, "rate_limited")
    assert c.end == 5.25 and c.length == 5.25  # to the millisecond, not float noise
    assert s.recoveries == [(c.end, "primary")]
    assert "1 failover" in timeline.summary(s) and "back at 5.2 s" in timeline.summary(s)


def test_the_bin_width_is_chosen_from_the_length():
    s = timeline.series(entries(demo_like()))
    assert s.bin_s == 0.5 and len(s.bin_starts) == 13  # 6.25 s: 0.25 s would make 26 bars
    assert timeline.choose_bin(0) == 0.1
    assert timeline.choose_bin(3600) == 300
    assert [timeline.choose_bin(d) for d in (2.4, 2.5)] == [0.1, 0.2]


def test_a_request_on_a_bin_edge_is_in_the_bin_it_starts():
    # 1796035900.202 - 1796035900.002 is 0.1999998 in floats: counted to the millisecond,
    # as the log has it, it is 0.2, the second bin's start.
    at = [f"{1796035900.002 + d:.3f}" for d in (0.0, 0.2, 0.4)]
    s = timeline.series(entries([line(0, "a", start_time=t) for t in at]), bin_s=0.2)
    assert s.counts["a"] == [1, 1, 1] and s.duration == 0.4
    assert [s.since(e) for e in entries([line(0, "a", start_time=t) for t in at])] == [0.0, 0.2, 0.4]


def test_log_order_is_not_time_order():
    # Envoy logs a request when it ends: a slow one comes after quicker ones it started before.
    shuffled = demo_like()
    shuffled.insert(5, shuffled.pop(0))
    s = timeline.series(entries(shuffled), bin_s=1.0)
    assert s.failovers[0].t == 0.0 and s.failovers[0].line == 6
    assert s.cooldowns[0].start == 0.0 and s.cooldowns[0].end == pytest.approx(5.25)


def test_a_cooldown_ends_at_a_2xx_only_and_a_new_failure_starts_another():
    lines = [
        line(0.0, "fallback", tried="primary,fallback", reason="rate_limited"),
        line(1.0, "fallback", tried="primary,fallback", reason="rate_limited"),  # still the same span
        line(2.0, "primary", status=400),  # the primary answered, but not with a 2xx
        line(3.0, "primary", status=201),  # back
        line(4.0, "fallback", tried="primary,primary,fallback", reason="server_error"),  # a retry, counted once
        line(5.0, "fallback"),
    ]
    s = timeline.series(entries(lines), bin_s=1.0)
    assert [(c.provider, c.start, c.end, c.reason) for c in s.cooldowns] == \
        [("primary", 0.0, 3.0, "rate_limited"), ("primary", 4.0, None, "server_error")]
    assert s.recoveries == [(3.0, "primary")]
    assert [f.t for f in s.failovers] == [0.0, 1.0, 4.0]
    assert "without a 2xx from 4.0 s to the end of the log" in timeline.summary(s)


def test_nobody_answered_and_empty_values():
    # Envoy writes a value it lacks as null in JSON, "-" in text: both mean none.
    lines = [
        line(0.0, None, status=503, tried="a,b", reason="server_error", endpoint="-"),
        line(0.5, "-", status=503, tried="-", reason="-"),
        line(1.0, "b", tried=""),
    ]
    got = entries(lines)
    assert [(e.provider, e.tried, e.reason) for e in got] == \
        [(None, ("a", "b"), "server_error"), (None, (), None), ("b", (), None)]
    assert got[0].moved_on_from == ("a", "b")  # nobody answered: both failed
    s = timeline.series(got, bin_s=0.5)
    assert s.providers == ["b", None] and s.counts[None] == [1, 1, 0] and s.counts["b"] == [0, 0, 1]
    assert [(c.provider, c.end) for c in s.cooldowns] == [("a", None), ("b", 1.0)]


def test_lines_that_are_not_request_lines_are_left_out_and_reported():
    lines = ["[2026-11-30 10:51:46.110][1397][warning][main] something Envoy said",
             line(0.0, "a"),
             "",
             json.dumps({"scope": "connection", "start_time": "1"}),
             line(1.0, "a")]
    got, left_out = timeline.read_entries(lines)
    assert [e.line for e in got] == [2, 5]
    assert left_out == [1, 3, 4]


@pytest.mark.parametrize("bad, message", [
    ('{"scope": "request", "start_time": ', "access log line 2: not JSON"),
    ('{"scope": "request"', "access log line 2: not JSON"),
    ('{"start_time": "1.0"}', "access log line 2: no scope field"),
    ('{"scope": "request", "start_time": "1.0", "http.status": 200}',
     "access log line 2: no provider, tried, failover_reason fields"),
    (line(1, "a", status="200"), "access log line 2: http.status is '200', not a number"),
    (line(1, "a", status=True), "access log line 2: http.status is True, not a number"),
    (line(1, "a", start_time="-"), "access log line 2: start_time is '-', not epoch seconds"),
    (line(1, "a", start_time=None), "access log line 2: start_time is None, not epoch seconds"),
    (line(1, "a", start_time="10:51:46"), "access log line 2: start_time is '10:51:46', not epoch seconds"),
    (line(1, "a", tried="a,,b"), "access log line 2: tried is 'a,,b', an empty name in the list"),
    (line(1, "a", tried=["a", "b"]), "access log line 2: tried is ['a', 'b'], not a comma-separated list"),
    (line(1, 7), "access log line 2: provider is 7, not a name"),
])
def test_a_request_line_it_cannot_read_is_an_error_naming_the_line(bad, message):
    with pytest.raises(timeline.TimelineError) as e:
        timeline.read_entries([line(0, "a"), bad, line(2, "a")])
    assert str(e.value).startswith(message), str(e.value)


def test_no_request_lines_is_an_error():
    with pytest.raises(timeline.TimelineError, match="no request lines"):
        timeline.series([])


def test_command_line(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("\n".join(["Envoy said something", *demo_like()]) + "\n")
    out = tmp_path / "t.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "timeline.py"), str(log), str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}: 26 requests over 6.2 s; 1 failover; primary cooled down from 0.0 s" in r.stdout
    assert "left out 1 line(s)" in r.stderr and ": 1" in r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    log.write_text(demo_like()[0] + "\n{not json\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "timeline.py"), str(log), str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith(f"timeline: {log} line 2: not JSON"), r.stderr

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "timeline.py"), str(log)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr
