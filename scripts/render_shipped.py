"""Renders every Envoy configuration the project ships from its plugin configuration
with `llm-failover render` (`make render`). With --check, changes nothing and fails
naming each file that differs from what render makes (CI runs it that way), so the
shipped wiring is always render's, never hand-edited."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENDER = ROOT / "target" / "release" / "llm-failover"
K8S_MARK = "  envoy.yaml: |\n"

# (plugin configuration, output, render options); paths relative to the repository.
TARGETS = [
    ("envoy/llm-failover.json", "envoy/envoy.yaml", []),
    ("envoy/openai.json", "envoy/envoy-openai.yaml", []),
    # The same as envoy/envoy.yaml with the native module (Envoy 1.40 only).
    ("envoy/llm-failover.json", "envoy/envoy-native.yaml", ["--native"]),
    # In the compose network: services by name, ports published on the container.
    ("compose/llm-failover.json", "compose/envoy.yaml",
     ["--listen", "0.0.0.0:10000", "--admin", "0.0.0.0:9901", "--ops", "0.0.0.0:9902",
      "--wasm", "/etc/envoy/llm_failover.wasm"]),
    # The ConfigMap in k8s/envoy/envoy.yaml; admin and health view stay on the pod's
    # loopback (kubectl port-forward).
    ("k8s/envoy/llm-failover.json", "k8s/envoy/envoy.yaml",
     ["--listen", "0.0.0.0:10000", "--wasm", "/etc/envoy/llm_failover.wasm"]),
    # Router mode in Istio (docs/istio.md): the resources, and the gateway's patch.
    ("k8s/istio/router/llm-failover.json", "k8s/istio/router/istio.yaml", ["--istio"]),
    ("k8s/istio/router/llm-failover.json", "k8s/istio/router/gateway-patch.yaml", ["--istio", "--gateway-patch"]),
]


def render(plugin: str, options: list[str]) -> str:
    r = subprocess.run([str(RENDER), "render", "--config", plugin, *options],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    if r.returncode != 0:
        raise SystemExit(f"render {plugin}: {r.stderr.strip()}")
    return r.stdout


def into_configmap(current: str, rendered: str, path: str) -> str:
    """Replaces the `envoy.yaml: |` block of the ConfigMap (the first document)."""
    head, sep, rest = current.partition(K8S_MARK)
    if not sep:
        raise SystemExit(f"{path}: no `envoy.yaml: |` block in its ConfigMap")
    _, dash, tail = rest.partition("\n---\n")
    block = "".join(f"    {line}" if line.strip() else "\n" for line in rendered.splitlines(keepends=True))
    return head + sep + block + (dash + tail if dash else "")


def expected(plugin: str, output: str, options: list[str]) -> str:
    rendered = render(plugin, options)
    if output.startswith("k8s/envoy/"):
        return into_configmap((ROOT / output).read_text(), rendered, output)
    return rendered


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if a shipped file differs; write nothing")
    args = ap.parse_args()
    if not RENDER.exists():
        raise SystemExit(f"{RENDER} is missing: run `make build`")
    stale = []
    for plugin, output, options in TARGETS:
        want = expected(plugin, output, options)
        if (ROOT / output).exists() and (ROOT / output).read_text() == want:
            continue
        stale.append(output)
        if not args.check:
            (ROOT / output).write_text(want)
            print(f"rendered {output} from {plugin}")
    if args.check and stale:
        print("differ from `llm-failover render` (run `make render`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
