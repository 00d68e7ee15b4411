"""Metrics for dashboards: Prometheus and OpenTelemetry (DESIGN 4.5).

Both exporters read the core's counters when they are collected
(``ServiceHost.stats`` and ``ServiceHost.cancel_latency()``): nothing is added
to the per-operation path, and an exporter made late still reports everything
since the host was created.

- :class:`PrometheusCollector` -- a ``prometheus_client`` custom collector
  (extra ``cancelcore[prometheus]``).
- :func:`instrument` -- observable instruments on an OpenTelemetry meter
  (extra ``cancelcore[otel]``).

Neither package is imported by ``import cancelcore`` or by importing this
module: each is imported when first used, and a missing one raises an
``ImportError`` naming the extra to install.

Both hold their host weakly: a host that is garbage-collected stops being
reported (its series disappear) rather than being kept alive by a registry.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

from ._host import ServiceHost

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from prometheus_client.metrics_core import Metric

__all__ = ["PrometheusCollector", "instrument"]

# (label / attribute value, key of ServiceHost.stats): cancellations
# delivered, by reason.
_REASONS = (("host_abort", "cancels_host_abort"), ("channel_faulted", "cancels_channel_faulted"))


def _check(host: Any, name: Any) -> None:
    if not isinstance(host, ServiceHost):
        raise TypeError(f"host must be a cancelcore.ServiceHost, not {type(host).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("name must not be empty")


def _missing(package: str, extra: str) -> ImportError:
    return ImportError(f"cancelcore.metrics needs {package} for this: pip install 'cancelcore[{extra}]'")


def _le(bound: float) -> str:
    """An upper bound as Prometheus spells it in ``le`` ("1e-06", "+Inf")."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _cumulative(host: ServiceHost) -> tuple[list[tuple[str, int]], int, float]:
    """The core's latency histogram as cumulative ``(le, count)`` pairs (the
    core keeps them per bucket), the count and the sum in seconds.  The
    count is the last cumulative bucket, so ``+Inf`` always equals it even
    while cancels are being counted."""
    buckets, _, total_s = host.cancel_latency()
    out: list[tuple[str, int]] = []
    running = 0
    for bound, count in buckets:
        running += count
        out.append((_le(bound), running))
    return out, running, total_s


# ----------------------------------------------------------------- Prometheus


class PrometheusCollector:
    """A ``prometheus_client`` collector for one host::

        from prometheus_client import REGISTRY
        REGISTRY.register(PrometheusCollector(host, name="api"))

    Each collection yields, labelled ``host="<name>"``:
    ``cancelcore_operations_in_flight`` (gauge),
    ``cancelcore_operations_begun_total``, ``cancelcore_operations_ended_total``,
    ``cancelcore_cancellations_total{reason="host_abort"|"channel_faulted"}``,
    ``cancelcore_free_states_total``, ``cancelcore_callback_errors_total``
    (counters) and ``cancelcore_cancel_latency_seconds`` (histogram of the
    time from a cancel's trigger to its callback's start; buckets 1 us * 2^i).

    ``describe()`` returns nothing, so one registry (even the default,
    auto-describing one) can hold one collector per host: the names repeat
    with a different ``host`` label.  Giving two hosts in one registry the
    same name is a configuration error that the registry cannot detect.
    """

    __slots__ = ("_host", "_name")

    def __init__(self, host: ServiceHost, name: str = "default") -> None:
        _check(host, name)
        try:
            import prometheus_client  # noqa: F401  (fail now, not at scrape time)
        except ImportError as exc:
            raise _missing("prometheus_client", "prometheus") from exc
        self._host: weakref.ref[ServiceHost] = weakref.ref(host)
        self._name = name

    @property
    def name(self) -> str:
        """The value of the ``host`` label."""
        return self._name

    def __repr__(self) -> str:
        return f"<PrometheusCollector host={self._name!r}>"

    def describe(self) -> list[Metric]:
        # Nothing: with its metric names here, a registry would refuse a
        # second host's collector as duplicate series.
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        host = self._host()
        if host is None:
            return
        stats = host.stats
        label = [self._name]

        in_flight = GaugeMetricFamily(
            "cancelcore_operations_in_flight",
            "Operations begun and not yet ended.",
            labels=["host"],
        )
        in_flight.add_metric(label, stats["ops_in_flight"])
        yield in_flight

        for metric, key, doc in (
            ("cancelcore_operations_begun_total", "ops_begun", "Operations begun."),
            ("cancelcore_operations_ended_total", "ops_ended", "Operations ended."),
        ):
            family = CounterMetricFamily(metric, doc, labels=["host"])
            family.add_metric(label, stats[key])
            yield family

        cancels = CounterMetricFamily(
            "cancelcore_cancellations_total",
            "Operations canceled, by reason (the host aborted, or their channel faulted).",
            labels=["host", "reason"],
        )
        for reason, key in _REASONS:
            cancels.add_metric([self._name, reason], stats[key])
        yield cancels

        for metric, key, doc in (
            ("cancelcore_free_states_total", "free_states_run", "Free-state callbacks run."),
            (
                "cancelcore_callback_errors_total",
                "callback_errors",
                "Exceptions raised by cancel or free-state callbacks.",
            ),
        ):
            family = CounterMetricFamily(metric, doc, labels=["host"])
            family.add_metric(label, stats[key])
            yield family

        buckets, _, total_s = _cumulative(host)
        latency = HistogramMetricFamily(
            "cancelcore_cancel_latency_seconds",
            "Time from a cancel's trigger (abort, fault, close escalation) to its callback's start.",
            labels=["host"],
            unit="seconds",
        )
        latency.add_metric(label, buckets, total_s)
        yield latency


# -------------------------------------------------------------- OpenTelemetry

_Callback = Callable[["CallbackOptions"], Iterable["Observation"]]


class _MeterHosts:
    """The instruments of one meter and the hosts they report.

    Made once per meter: a meter hands back the first instrument for a name
    made twice (the second one's callbacks would be lost), so every host
    instrumented on a meter is reported by the same callbacks, told apart by
    their ``host`` attribute.
    """

    def __init__(self, meter: Meter) -> None:
        from opentelemetry.metrics import Observation

        self._observation = Observation
        self._lock = threading.Lock()
        self._hosts: dict[str, weakref.ref[ServiceHost]] = {}

        meter.create_observable_up_down_counter(
            "cancelcore.operations.in_flight",
            callbacks=[self._stat("ops_in_flight")],
            unit="{operation}",
            description="Operations begun and not yet ended.",
        )
        for name, key, unit, doc in (
            ("cancelcore.operations.begun", "ops_begun", "{operation}", "Operations begun."),
            ("cancelcore.operations.ended", "ops_ended", "{operation}", "Operations ended."),
            ("cancelcore.free_states", "free_states_run", "{callback}", "Free-state callbacks run."),
            (
                "cancelcore.callback_errors",
                "callback_errors",
                "{error}",
                "Exceptions raised by cancel or free-state callbacks.",
            ),
        ):
            meter.create_observable_counter(name, callbacks=[self._stat(key)], unit=unit, description=doc)
        meter.create_observable_counter(
            "cancelcore.cancellations",
            callbacks=[self._cancellations],
            unit="{cancellation}",
            description="Operations canceled, by reason (the host aborted, or their channel faulted).",
        )
        # The latency histogram as the three series of a Prometheus
        # histogram (OpenTelemetry has no observable histogram; see README).
        meter.create_observable_counter(
            "cancelcore.cancel_latency.count",
            callbacks=[self._latency_count],
            unit="{cancellation}",
            description="Cancels timed from their trigger to their callback's start.",
        )
        meter.create_observable_counter(
            "cancelcore.cancel_latency.sum",
            callbacks=[self._latency_sum],
            unit="s",
            description="Sum of the times from a cancel's trigger to its callback's start.",
        )
        meter.create_observable_counter(
            "cancelcore.cancel_latency.bucket",
            callbacks=[self._latency_buckets],
            unit="{cancellation}",
            description="Cancels whose trigger-to-callback time was at most `le` seconds (cumulative).",
        )

    def add(self, host: ServiceHost, name: str) -> None:
        with self._lock:
            ref = self._hosts.get(name)
            known = ref() if ref is not None else None
            if known is host:
                return  # instrumented already: nothing to add
            if known is not None:
                raise ValueError(f"this meter already reports a host named {name!r}")
            self._hosts[name] = weakref.ref(host)

    def _live(self) -> list[tuple[dict[str, str], ServiceHost]]:
        live = []
        with self._lock:
            for name, ref in list(self._hosts.items()):
                host = ref()
                if host is None:
                    del self._hosts[name]  # garbage-collected: no longer reported
                else:
                    live.append(({"host": name}, host))
        return live

    def _stat(self, key: str) -> _Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [self._observation(host.stats[key], attrs) for attrs, host in self._live()]

        return observe

    def _cancellations(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for attrs, host in self._live():
            stats = host.stats
            for reason, key in _REASONS:
                out.append(self._observation(stats[key], {**attrs, "reason": reason}))
        return out

    def _latency_count(self, options: CallbackOptions) -> Iterable[Observation]:
        return [self._observation(_cumulative(host)[1], attrs) for attrs, host in self._live()]

    def _latency_sum(self, options: CallbackOptions) -> Iterable[Observation]:
        return [self._observation(_cumulative(host)[2], attrs) for attrs, host in self._live()]

    def _latency_buckets(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for attrs, host in self._live():
            for le, count in _cumulative(host)[0]:
                out.append(self._observation(count, {**attrs, "le": le}))
        return out


_meters_lock = threading.Lock()
# Weak where the meter allows it, so a dropped meter takes its entry along.
_meters_weak: weakref.WeakKeyDictionary[Any, _MeterHosts] = weakref.WeakKeyDictionary()
_meters_strong: dict[int, tuple[Any, _MeterHosts]] = {}


def _for_meter(meter: Meter) -> _MeterHosts:
    with _meters_lock:
        try:
            hosts: Union[_MeterHosts, None] = _meters_weak.get(meter)
            weak = True
        except TypeError:  # not weakly referenceable
            entry = _meters_strong.get(id(meter))
            hosts = entry[1] if entry is not None else None
            weak = False
        if hosts is None:
            hosts = _MeterHosts(meter)
            if weak:
                _meters_weak[meter] = hosts
            else:
                _meters_strong[id(meter)] = (meter, hosts)
        return hosts


def instrument(host: ServiceHost, meter: Meter, name: str = "default") -> None:
    """Reports ``host`` on an OpenTelemetry ``meter``, with the attribute
    ``host=<name>``::

        from opentelemetry import metrics
        instrument(host, metrics.get_meter("cancelcore"), name="api")

    Observable instruments whose callbacks read the core at collection time:
    ``cancelcore.operations.in_flight`` (up-down counter),
    ``cancelcore.operations.begun``, ``cancelcore.operations.ended``,
    ``cancelcore.cancellations`` (attribute ``reason``: ``host_abort`` |
    ``channel_faulted``), ``cancelcore.free_states``,
    ``cancelcore.callback_errors`` (counters), and the cancel latency as
    ``cancelcore.cancel_latency.count``, ``.sum`` (seconds) and ``.bucket``
    (cumulative, attribute ``le`` as in Prometheus: "1e-06" ... "+Inf").
    Exported to Prometheus by OpenTelemetry's exporter the counters get the
    same names as :class:`PrometheusCollector`'s.

    Several hosts may share a meter under different names; instrumenting the
    same host and name again does nothing; another host under a name the
    meter already reports raises ``ValueError``.
    """
    _check(host, name)
    try:
        from opentelemetry.metrics import Meter as _Meter
    except ImportError as exc:
        raise _missing("opentelemetry-api", "otel") from exc
    if not isinstance(meter, _Meter):
        raise TypeError(f"meter must be an opentelemetry.metrics.Meter, not {type(meter).__name__}")
    _for_meter(meter).add(host, name)
