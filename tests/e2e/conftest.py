import pytest

from harness import MOCK_BIN, WASM, Envoy, Mock, RawProvider, istio_wiring, native_build


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "wasm_only(reason): skipped when LLM_FAILOVER_BUILD=native runs the suite against "
                   "the native module, which does not do this (the reason says what and why)")


    config.addinivalue_line(
        "markers", "first_pass_only(reason): a long test whose subject is the same in every build and "
                   "wiring (the core's own timing): run by the .wasm pass, skipped by the native and Istio "
                   "passes of `make test`, which stays within its time budget")


def pytest_collection_modifyitems(config, items):
    native, istio = native_build(), istio_wiring()
    for item in items:
        marker = item.get_closest_marker("wasm_only")
        if marker and native:
            item.add_marker(pytest.mark.skip(reason=f"wasm build only: {marker.args[0]}"))
        marker = item.get_closest_marker("first_pass_only")
        if marker and (native or istio):
            item.add_marker(pytest.mark.skip(reason=f"the .wasm pass runs it: {marker.args[0]}"))


def pytest_sessionstart(session):
    missing = [str(p) for p in (WASM, MOCK_BIN) if not p.exists()]
    if missing:
        raise pytest.UsageError(f"build first (`make build`): missing {', '.join(missing)}")


@pytest.fixture
def mocks():
    """Factory: mocks('name', '--flag', 'value', ...) -> Mock, all stopped after the test."""
    started = []

    def start(name, *args, port=None):
        m = Mock(name, *args, port=port)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


@pytest.fixture
def envoy():
    """Factory: envoy(plugin_config, clusters, env=...) -> Envoy, stopped after the test."""
    started = []

    def start(plugin, clusters, **kw):
        e = Envoy(plugin, clusters, **kw)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


@pytest.fixture
def raw_providers():
    """Factory: raw_providers('silent' | 'reset' | 'late-reset' | 'broken-stream' | 'reset-stream') ->
    RawProvider (see harness), all stopped after the test."""
    started = []

    def start(mode):
        p = RawProvider(mode)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
