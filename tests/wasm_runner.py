"""Cargo runner for `cargo test --target wasm32-wasip1`: runs a test binary in
wasmtime (PyPI) with WASI.

The pure modules are tested on the target the filter ships for. Imports that are
not WASI (the proxy-wasm host functions, reachable only from the Envoy glue that
unit tests never call) are defined as traps, so a test that reached one by mistake
fails loudly instead of the module failing to load."""

import sys

import wasmtime

WASI_MODULES = {"wasi_snapshot_preview1", "wasi_unstable"}


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: wasm_runner.py TEST.wasm [ARGS...]", file=sys.stderr)
        return 2
    path = sys.argv[1]
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, path)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = [path, *sys.argv[2:]]
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.inherit_env()
    store.set_wasi(wasi)
    for imp in module.imports:
        if imp.module in WASI_MODULES or not isinstance(imp.type, wasmtime.FuncType):
            continue

        def trap(*_args, _name=f"{imp.module}.{imp.name}"):
            raise RuntimeError(f"host function {_name} called from a unit test")

        linker.define_func(imp.module, imp.name, imp.type, trap)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    try:
        start(store)
    except wasmtime.ExitTrap as e:
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
