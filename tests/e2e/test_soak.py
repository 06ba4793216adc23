"""The soak with faults, short (5,000 requests per mode, 64 clients): nothing lost,
nothing executed twice, no provider sees another's model or key, no VM reload.
`make soak` is the long one (SOAK.md)."""

import json
import subprocess
import sys

import pytest
from harness import ROOT, native_build

# Each mode names its build (native, native-hedge: the module; the others: the .wasm), so
# the .wasm pass of `make test` runs all five; the native pass would repeat them.
pytestmark = pytest.mark.skipif(native_build(), reason="the soak's modes name their build: the .wasm pass runs all five")


@pytest.mark.parametrize("mode", ["router", "native", "dispatch", "hedge", "native-hedge"])
def test_short_soak_loses_nothing(mode):
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "soak" / "soak.py"), "--requests", "5000",
                        "--clients", "64", "--modes", mode, "--max-seconds", "120", "--no-report",
                        "--tempo", "0.3", "--pace", "0.06"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, (r.stderr[-2000:], result)
    assert result["requests"] == 5000 and result["answered_200"] == 5000
    for key in ("lost", "executed_twice", "same_provider_twice", "wrong_model_or_key", "vm_reloads", "panics"):
        assert result[key] == 0, (key, result)
    # The faults were met: the primary answered and failed, and both providers served.
    assert result["served_by_primary"] > 0 and result["served_by_fallback"] > 0, result
    assert sum(n for kind, n in result["primary_outcomes"].items() if kind != "ok") > 0, result
    assert result["breaker_at_end"]["fallback"] == "healthy"
    assert result["recovery_s"] < 5
    if mode.endswith("hedge"):
        assert result["hedged_requests"] > 0, result
