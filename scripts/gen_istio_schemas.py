"""Generates k8s/schemas/*.json, the JSON schemas the tests check the Istio manifests
against, from the PyPI package cloudcoil-models-istio (run once; the output is
committed, so CI needs neither this script's package nor the network). Run it in a
throwaway virtualenv: cloudcoil installs a pytest plugin that breaks the test run.

Objects with declared properties are made strict (additionalProperties: false), so a
misspelled field fails like `kubernetes-validate --strict` does for core kinds."""

import json
import sys
from pathlib import Path

from cloudcoil.models.istio.extensions import v1alpha1 as extensions
from cloudcoil.models.istio.networking import v1 as networking
from cloudcoil.models.istio.networking import v1alpha3 as networking3

OUT = Path(__file__).resolve().parents[1] / "k8s" / "schemas"
KINDS = {
    "WasmPlugin": extensions.WasmPlugin,
    "ServiceEntry": networking.ServiceEntry,
    "DestinationRule": networking.DestinationRule,
    "VirtualService": networking.VirtualService,
    "Gateway": networking.Gateway,
    "EnvoyFilter": networking3.EnvoyFilter,
}


def strict(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for kind, model in KINDS.items():
        schema = strict(model.model_json_schema(by_alias=True))
        (OUT / f"{kind}.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {kind}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
