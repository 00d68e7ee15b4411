"""cancelcore.metrics: the Prometheus collector and the OpenTelemetry
instruments (DESIGN 4.5), against exact counts from a known scenario.

Both read the core at collection time, so the exporters here are mostly made
*after* the operations ran: they must still report everything since the host
was created.
"""

from __future__ import annotations

import gc
import threading
import urllib.request
import wsgiref.simple_server
from typing import Any, Callable, Iterator, Optional

# Both packages are test dependencies: a missing one fails here, not skips.
import prometheus_client
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cancelcore import CancelReason, ServiceHost
from cancelcore.metrics import PrometheusCollector, instrument

from conftest import HookCollector, run_isolated

# What the scenario below leaves behind (each number follows from it).
BEGUN = 9  # 3 on the faulted channel, 2 ended plainly, 4 aborted
FAULTED = 3  # canceled by their channel faulting (1 of them unregistered)
ABORTED = 4  # canceled by the host abort (2 of them unregistered)
FREED = 5  # free-states: 2 on the faulted channel, 2 plain, 1 aborted
ERRORS = 2  # one raising cancel callback, one raising free-state
IN_FLIGHT_BEFORE_ABORT = 4


def _boom(*_: Any) -> None:
    raise RuntimeError("callback failure (expected by the test)")


def scenario(
    host: ServiceHost, before_abort: Optional[Callable[[], None]] = None
) -> tuple[list[CancelReason], list[Any]]:
    """Runs the operations counted above on an open host; returns what the
    callbacks that did not raise saw: the reasons of cancels, the states
    freed."""
    reasons: list[CancelReason] = []
    freed: list[Any] = []
    lock = threading.Lock()

    def cancel(reason: CancelReason, state: Any) -> None:
        with lock:
            reasons.append(reason)

    def free(state: Any) -> None:
        with lock:
            freed.append(state)

    # A channel that faults: a registered op, one whose cancel callback
    # raises, one not registered.
    faulty = host.accept_channel()
    f_ops = [faulty.begin_operation() for _ in range(3)]
    f_ops[0].register_for_cancel(cancel, free, state="f0")
    f_ops[1].register_for_cancel(_boom, free, state="f1")
    faulty.fault()

    # Ended without a cancel.
    plain = host.accept_channel()
    for i in range(2):
        with plain.begin_operation() as ctx:
            ctx.register_for_cancel(cancel, free, state=f"p{i}")
    for ctx in f_ops:
        ctx.end()

    # In flight when the host aborts: one with a raising free-state, one
    # without a free-state, two not registered.
    live = host.accept_channel()
    a_ops = [live.begin_operation() for _ in range(4)]
    a_ops[0].register_for_cancel(cancel, _boom, state="a0")
    a_ops[1].register_for_cancel(cancel)
    if before_abort is not None:
        before_abort()
    host.abort()
    for ctx in a_ops:
        ctx.end()
    return sorted(reasons), sorted(freed)


@pytest.fixture
def ran(make_host: Callable[..., ServiceHost], error_hook: HookCollector) -> Iterator[ServiceHost]:
    """A host after the scenario, its counts checked against the core."""
    host = make_host()
    reasons, freed = scenario(host)
    assert reasons == sorted([CancelReason.CHANNEL_FAULTED, CancelReason.HOST_ABORT, CancelReason.HOST_ABORT])
    assert freed == ["f0", "f1", "p0", "p1"]  # and a0's, which raised
    assert len(error_hook.calls) == ERRORS
    stats = host.stats
    assert stats["ops_begun"] == BEGUN and stats["ops_ended"] == BEGUN
    assert stats["cancels_channel_faulted"] == FAULTED and stats["cancels_host_abort"] == ABORTED
    assert stats["free_states_run"] == FREED and stats["callback_errors"] == ERRORS
    yield host


def latency_expected(host: ServiceHost) -> tuple[list[tuple[str, int]], float]:
    """The core's histogram as cumulative (le, count) pairs, and its sum."""
    buckets, count, total = host.cancel_latency()
    assert count == FAULTED + ABORTED  # every cancel is timed, registered or not
    out, running = [], 0
    for bound, n in buckets:
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    assert running == count
    return out, total


# ----------------------------------------------------------------- Prometheus


def sample(registry: CollectorRegistry, name: str, **labels: str) -> Optional[float]:
    return registry.get_sample_value(name, labels)


def test_prometheus_every_sample_after_the_fact(ran: ServiceHost) -> None:
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(ran, name="api"))  # made after everything ran
    assert sample(registry, "cancelcore_operations_in_flight", host="api") == 0
    assert sample(registry, "cancelcore_operations_begun_total", host="api") == BEGUN
    assert sample(registry, "cancelcore_operations_ended_total", host="api") == BEGUN
    assert sample(registry, "cancelcore_cancellations_total", host="api", reason="host_abort") == ABORTED
    assert sample(registry, "cancelcore_cancellations_total", host="api", reason="channel_faulted") == FAULTED
    assert sample(registry, "cancelcore_free_states_total", host="api") == FREED
    assert sample(registry, "cancelcore_callback_errors_total", host="api") == ERRORS

    buckets, total = latency_expected(ran)
    assert len(buckets) == 16
    for le, count in buckets:
        assert sample(registry, "cancelcore_cancel_latency_seconds_bucket", host="api", le=le) == count
    assert sample(registry, "cancelcore_cancel_latency_seconds_count", host="api") == FAULTED + ABORTED
    got_sum = sample(registry, "cancelcore_cancel_latency_seconds_sum", host="api")
    assert got_sum == pytest.approx(total) and total > 0
    # No other label values, no stray series.
    assert sample(registry, "cancelcore_cancellations_total", host="default", reason="host_abort") is None


def test_prometheus_exposition_names_and_types(ran: ServiceHost) -> None:
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(ran))
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: f.type for name, f in families.items()} == {
        "cancelcore_operations_in_flight": "gauge",
        "cancelcore_operations_begun": "counter",
        "cancelcore_operations_ended": "counter",
        "cancelcore_cancellations": "counter",
        "cancelcore_free_states": "counter",
        "cancelcore_callback_errors": "counter",
        "cancelcore_cancel_latency_seconds": "histogram",
    }
    # Counters are exposed with the _total suffix, every series labelled host.
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        assert 'host="default"' in line, line
    assert 'cancelcore_operations_begun_total{host="default"} 9.0' in text
    assert 'cancelcore_cancel_latency_seconds_bucket{host="default",le="+Inf"} 7.0' in text
    for f in families.values():
        assert f.documentation


def test_prometheus_live_values_and_scrape_over_http(
    make_host: Callable[..., ServiceHost], error_hook: HookCollector
) -> None:
    """Registered before anything ran and scraped over real HTTP on
    127.0.0.1: in flight while operations run, then the final counts."""
    host = make_host()
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(host, name="live"))
    app = prometheus_client.make_wsgi_app(registry)

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            text = resp.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    try:
        first = scrape()
        assert first[("cancelcore_operations_begun_total", (("host", "live"),))] == 0
        mid: dict[Any, float] = {}
        scenario(host, before_abort=lambda: mid.update(scrape()))
        assert mid[("cancelcore_operations_in_flight", (("host", "live"),))] == IN_FLIGHT_BEFORE_ABORT
        assert mid[("cancelcore_operations_begun_total", (("host", "live"),))] == BEGUN
        assert mid[("cancelcore_cancellations_total", (("host", "live"), ("reason", "host_abort")))] == 0
        assert mid[("cancelcore_cancellations_total", (("host", "live"), ("reason", "channel_faulted")))] == FAULTED
        last = scrape()
        assert last[("cancelcore_operations_in_flight", (("host", "live"),))] == 0
        assert last[("cancelcore_operations_ended_total", (("host", "live"),))] == BEGUN
        assert last[("cancelcore_cancellations_total", (("host", "live"), ("reason", "host_abort")))] == ABORTED
        assert last[("cancelcore_free_states_total", (("host", "live"),))] == FREED
        assert last[("cancelcore_callback_errors_total", (("host", "live"),))] == ERRORS
        assert last[("cancelcore_cancel_latency_seconds_count", (("host", "live"),))] == FAULTED + ABORTED
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_prometheus_two_hosts_in_an_auto_describing_registry(
    ran: ServiceHost, make_host: Callable[..., ServiceHost]
) -> None:
    other = make_host()
    with other.accept_channel().begin_operation():
        pass
    # The default REGISTRY describes collectors by collecting them unless
    # they have describe(): two hosts must not clash as duplicate series.
    registry = CollectorRegistry(auto_describe=True)
    first, second = PrometheusCollector(ran, name="a"), PrometheusCollector(other, name="b")
    registry.register(first)
    registry.register(second)
    assert sample(registry, "cancelcore_operations_begun_total", host="a") == BEGUN
    assert sample(registry, "cancelcore_operations_begun_total", host="b") == 1
    assert sample(registry, "cancelcore_cancellations_total", host="b", reason="host_abort") == 0
    assert sample(registry, "cancelcore_cancel_latency_seconds_count", host="b") == 0
    assert sample(registry, "cancelcore_cancel_latency_seconds_bucket", host="b", le="+Inf") == 0
    registry.unregister(first)
    assert sample(registry, "cancelcore_operations_begun_total", host="a") is None
    assert sample(registry, "cancelcore_operations_begun_total", host="b") == 1
    assert first.name == "a" and "a" in repr(first)


def test_prometheus_collector_does_not_keep_its_host() -> None:
    host = ServiceHost()
    collector = PrometheusCollector(host)
    assert len(list(collector.collect())) == 7
    del host
    gc.collect()
    assert list(collector.collect()) == []


# -------------------------------------------------------------- OpenTelemetry


def otel_points(reader: InMemoryMetricReader) -> dict[str, Any]:
    """name -> (metric, {frozenset(attributes): value})"""
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    for rm in data.resource_metrics if data is not None else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if not m.name.startswith("cancelcore."):
                    continue  # the SDK's own metrics (some versions report them)
                points: Any = m.data.data_points
                out[m.name] = (m, {frozenset(p.attributes.items()): p.value for p in points})
    return out


def attrs(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


def test_otel_every_point_after_the_fact(ran: ServiceHost) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument(ran, provider.get_meter("test"), name="api")  # made after everything ran
        got = otel_points(reader)
        api = attrs(host="api")
        expected = {
            "cancelcore.operations.in_flight": ("{operation}", False, {api: 0}),
            "cancelcore.operations.begun": ("{operation}", True, {api: BEGUN}),
            "cancelcore.operations.ended": ("{operation}", True, {api: BEGUN}),
            "cancelcore.cancellations": (
                "{cancellation}",
                True,
                {
                    attrs(host="api", reason="host_abort"): ABORTED,
                    attrs(host="api", reason="channel_faulted"): FAULTED,
                },
            ),
            "cancelcore.free_states": ("{callback}", True, {api: FREED}),
            "cancelcore.callback_errors": ("{error}", True, {api: ERRORS}),
            "cancelcore.cancel_latency.count": ("{cancellation}", True, {api: FAULTED + ABORTED}),
        }
        buckets, total = latency_expected(ran)
        expected["cancelcore.cancel_latency.bucket"] = (
            "{cancellation}",
            True,
            {attrs(host="api", le=le): n for le, n in buckets},
        )
        for name, (unit, monotonic, points) in expected.items():
            metric, values = got[name]
            assert metric.unit == unit, name
            assert metric.data.is_monotonic is monotonic, name
            assert values == points, name
        metric, values = got["cancelcore.cancel_latency.sum"]
        assert metric.unit == "s" and metric.data.is_monotonic
        assert values[api] == pytest.approx(total) and total > 0
        assert set(got) == set(expected) | {"cancelcore.cancel_latency.sum"}
    finally:
        provider.shutdown()


def test_otel_follows_the_host_between_collections(make_host: Callable[..., ServiceHost]) -> None:
    host = make_host()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument(host, provider.get_meter("test"))
        d = attrs(host="default")
        assert otel_points(reader)["cancelcore.operations.begun"][1] == {d: 0}
        channel = host.accept_channel()
        ops = [channel.begin_operation() for _ in range(5)]
        got = otel_points(reader)
        assert got["cancelcore.operations.in_flight"][1] == {d: 5}
        assert got["cancelcore.operations.begun"][1] == {d: 5}
        channel.fault()
        for ctx in ops:
            ctx.end()
        got = otel_points(reader)
        assert got["cancelcore.operations.in_flight"][1] == {d: 0}
        assert got["cancelcore.operations.ended"][1] == {d: 5}
        assert got["cancelcore.cancellations"][1][attrs(host="default", reason="channel_faulted")] == 5
        assert got["cancelcore.cancel_latency.count"][1] == {d: 5}
        assert got["cancelcore.cancel_latency.bucket"][1][attrs(host="default", le="+Inf")] == 5
    finally:
        provider.shutdown()


def test_otel_two_hosts_on_one_meter(ran: ServiceHost, make_host: Callable[..., ServiceHost]) -> None:
    other = make_host()
    for _ in range(2):
        with other.accept_channel().begin_operation():
            pass
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        meter = provider.get_meter("test")
        instrument(ran, meter, name="a")
        instrument(other, meter, name="b")
        instrument(other, meter, name="b")  # again: nothing added
        with pytest.raises(ValueError, match="'a'"):
            instrument(other, meter, name="a")  # another host under a name in use
        got = otel_points(reader)
        assert got["cancelcore.operations.begun"][1] == {attrs(host="a"): BEGUN, attrs(host="b"): 2}
        assert got["cancelcore.cancellations"][1] == {
            attrs(host="a", reason="host_abort"): ABORTED,
            attrs(host="a", reason="channel_faulted"): FAULTED,
            attrs(host="b", reason="host_abort"): 0,
            attrs(host="b", reason="channel_faulted"): 0,
        }
        assert len(got["cancelcore.cancel_latency.bucket"][1]) == 32
        # A second meter reports independently.
        reader2 = InMemoryMetricReader()
        provider2 = MeterProvider(metric_readers=[reader2])
        try:
            instrument(other, provider2.get_meter("test"), name="a")
            assert otel_points(reader2)["cancelcore.operations.begun"][1] == {attrs(host="a"): 2}
        finally:
            provider2.shutdown()
    finally:
        provider.shutdown()


def test_otel_does_not_keep_its_host() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        meter = provider.get_meter("test")
        host = ServiceHost()
        instrument(host, meter, name="gone")
        assert otel_points(reader)["cancelcore.operations.begun"][1] == {attrs(host="gone"): 0}
        del host
        gc.collect()
        # No longer reported, and its name is free for another host.
        assert all(points == {} for _, points in otel_points(reader).values())
        replacement = ServiceHost()
        replacement.open()
        with replacement.accept_channel().begin_operation():
            pass
        instrument(replacement, meter, name="gone")
        assert otel_points(reader)["cancelcore.operations.begun"][1] == {attrs(host="gone"): 1}
        replacement.close()
    finally:
        provider.shutdown()


def test_otel_prometheus_exporter_gives_the_prometheus_names(ran: ServiceHost) -> None:
    """OpenTelemetry's own Prometheus exporter turns the instruments into
    the names and types PrometheusCollector uses (the latency aside: three
    counters there), with the same values."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    ours = CollectorRegistry()
    ours.register(PrometheusCollector(ran, name="api"))
    expected = {
        (s.name, s.labels.get("host"), s.labels.get("reason"), f.type): s.value
        for f in text_string_to_metric_families(generate_latest(ours).decode())
        if f.type != "histogram"
        for s in f.samples
    }
    reader = PrometheusMetricReader()  # registers with prometheus_client's REGISTRY
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument(ran, provider.get_meter("test"), name="api")
        text = generate_latest(prometheus_client.REGISTRY).decode()
    finally:
        provider.shutdown()
    theirs = {
        (s.name, s.labels.get("host"), s.labels.get("reason"), f.type): s.value
        for f in text_string_to_metric_families(text)
        if f.name.startswith("cancelcore_") and not f.name.startswith("cancelcore_cancel_latency")
        for s in f.samples
    }
    assert theirs == expected
    assert len(expected) == 7
    latency = {
        s.labels.get("le"): s.value
        for f in text_string_to_metric_families(text)
        if f.name == "cancelcore_cancel_latency_bucket"
        for s in f.samples
    }
    assert latency["+Inf"] == FAULTED + ABORTED and len(latency) == 16


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("bad", [None, object(), "host", 1])
def test_non_host_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="ServiceHost"):
        PrometheusCollector(bad)
    provider = MeterProvider()
    try:
        with pytest.raises(TypeError, match="ServiceHost"):
            instrument(bad, provider.get_meter("test"))
    finally:
        provider.shutdown()


def test_channel_is_not_a_host(host: ServiceHost) -> None:
    with pytest.raises(TypeError):
        PrometheusCollector(host.accept_channel())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, 1, b"api"])
def test_non_str_name_is_a_type_error(bad: Any) -> None:
    host = ServiceHost()
    with pytest.raises(TypeError, match="name"):
        PrometheusCollector(host, name=bad)
    provider = MeterProvider()
    try:
        with pytest.raises(TypeError, match="name"):
            instrument(host, provider.get_meter("test"), name=bad)
    finally:
        provider.shutdown()


def test_empty_name_is_a_value_error() -> None:
    host = ServiceHost()
    with pytest.raises(ValueError, match="empty"):
        PrometheusCollector(host, name="")
    provider = MeterProvider()
    try:
        with pytest.raises(ValueError, match="empty"):
            instrument(host, provider.get_meter("test"), name="")
    finally:
        provider.shutdown()


@pytest.mark.parametrize("bad", [None, object(), "meter"])
def test_non_meter_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="Meter"):
        instrument(ServiceHost(), bad)


# ------------------------------------------------------------ optional deps


def test_import_cancelcore_needs_neither_package() -> None:
    res = run_isolated(
        """
        import sys
        import cancelcore, cancelcore.metrics
        host = cancelcore.ServiceHost()
        assert host.stats["ops_begun"] == 0
        bad = [m for m in sys.modules if m.startswith(("prometheus_client", "opentelemetry"))]
        assert not bad, bad
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "blocked, call, extra",
    [
        ("prometheus_client", "PrometheusCollector(host)", "cancelcore[prometheus]"),
        ("opentelemetry", "instrument(host, object())", "cancelcore[otel]"),
    ],
)
def test_missing_package_names_the_extra(blocked: str, call: str, extra: str) -> None:
    res = run_isolated(
        f"""
        import sys
        sys.modules[{blocked!r}] = None  # as if not installed
        import cancelcore
        from cancelcore.metrics import PrometheusCollector, instrument
        host = cancelcore.ServiceHost()
        try:
            {call}
        except ImportError as exc:
            print(exc)
        else:
            print("no error")
        """
    )
    assert res.returncode == 0, res.stderr
    assert extra in res.stdout, res.stdout
