"""Where a frame's time goes, and the cloud half that answers in microseconds.

* the histograms' quantiles (:func:`edgelearn.metrics.histogram_quantile`) and the per-hop
  figures ``bench pipeline`` makes of two scrapes (:func:`bench.pipeline.hop_figures`);
* a cloud half of dense layers only, answered in numpy, answers what its Keras model
  answers: the same classes, probabilities to float rounding, whatever the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bench.pipeline import HOP_PARTS, HOPS, hop_figures
from cloud.metrics import CloudMetrics
from edgelearn.metrics import HOP_BUCKETS, Samples, histogram_quantile, parse_samples
from edgelearn.modes import Mode
from gateway.metrics import GatewayMetrics


def test_histogram_quantiles_interpolate_within_buckets_as_promql_does() -> None:
    buckets = {0.01: 50.0, 0.02: 90.0, 0.05: 100.0, float("inf"): 100.0}
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.01)
    assert histogram_quantile(buckets, 0.7) == pytest.approx(0.015)
    assert histogram_quantile(buckets, 0.99) == pytest.approx(0.047)
    assert histogram_quantile({0.01: 0.0, float("inf"): 0.0}, 0.5) is None
    assert histogram_quantile({0.01: 0.0, float("inf"): 4.0}, 0.5) == 0.01  # a floor


def _scrape(gateway: CollectorRegistry, cloud: CollectorRegistry) -> tuple[Samples, Samples]:
    """Both registries as :func:`edgelearn.metrics.scrape` reads their endpoints."""
    return (
        parse_samples(generate_latest(gateway).decode()),
        parse_samples(generate_latest(cloud).decode()),
    )


def test_the_bench_reports_each_hop_of_its_own_run_only() -> None:
    gateway_registry, cloud_registry = CollectorRegistry(), CollectorRegistry()
    gateway, cloud = GatewayMetrics(gateway_registry), CloudMetrics(cloud_registry)
    mode = Mode.split(8)
    for _ in range(20):  # an earlier run, slow everywhere: not this run's
        for hop in ("camera", "queue", "processing", "outbox", "publish"):
            gateway.hop_seconds.labels(hop).observe(0.9)
        cloud.hop_seconds.labels(str(mode), "inference").observe(0.9)
    before = _scrape(gateway_registry, cloud_registry)
    for index in range(100):
        gateway.hop_seconds.labels("camera").observe(0.004)
        gateway.hop_seconds.labels("queue").observe(0.0005)
        gateway.hop_seconds.labels("processing").observe(0.006 if index < 99 else 0.2)
        gateway.processed_age.observe(0.011)
        cloud.arrival_age.labels(str(mode)).observe(0.018)
        cloud.hop_seconds.labels(str(mode), "inference").observe(0.0001)
        cloud.hop_seconds.labels("raw", "inference").observe(0.5)  # another mode's
    after = _scrape(gateway_registry, cloud_registry)
    hops = hop_figures(mode, before, after, deliveries=[0.001] * 99 + [0.009])
    assert list(hops)[: len(HOPS + HOP_PARTS)] == [key for key, _, _ in HOPS + HOP_PARTS]
    camera = hops["camera_to_gateway"]
    assert camera["count"] == 100
    assert 0.003 < (camera["p50_seconds"] or 0) <= 0.005  # in its bucket
    processing = hops["gateway_processing"]
    assert (processing["p50_seconds"] or 0) <= 0.0075
    assert (processing["p99_seconds"] or 0) <= 0.0075 < 0.2  # one slow frame in 100: p100
    inference = hops["cloud_inference"]
    assert inference["count"] == 100 and (inference["p99_seconds"] or 1) <= 0.001
    assert hops["cloud_queue"] == {"p50_seconds": None, "p99_seconds": None, "count": 0}
    uplink = hops["outbox_and_uplink"]  # 18 ms old at the cloud, 11 ms at the gateway's end
    assert uplink["estimated"] and 0 < (uplink["p50_seconds"] or 0) <= 0.01
    assert hops["result"]["count"] == 100
    assert hops["result"]["p50_seconds"] == pytest.approx(0.001)


def test_hop_buckets_are_fine_where_the_targets_are() -> None:
    assert {0.015, 0.03, 0.05} <= set(HOP_BUCKETS)
    assert sum(1 for bound in HOP_BUCKETS if bound <= 0.05) >= 10


@pytest.mark.training
def test_every_cloud_half_answers_in_numpy_what_keras_answers(trained_registry: Path) -> None:
    from cloud.models import cnn
    from cloud.models.numpy_half import NumpyHalf
    from cloud.registry import Registry, keras_to_bytes
    from cloud.serving import RegistryModels, deployable

    registry = Registry(trained_registry)
    models = RegistryModels(registry)
    halves = {}
    for entry in [*deployable(registry, (2,)), registry.serving(Mode("raw"))]:
        classifier = models.load(entry)
        assert classifier.numpy is not None and classifier.keras is None, entry.mode
        halves[str(entry.mode)] = (registry.load_cloud_model(entry), classifier.numpy)
    # every other boundary's upper part, cut from the full CNN as the trainer cuts it
    full = registry.load_cloud_model(registry.serving(Mode("full")))
    for k in range(1, cnn.num_blocks(full)):
        upper = cnn.split(full, k)[1]
        halves[f"split:{k}"] = (upper, NumpyHalf.from_archive(keras_to_bytes(upper)))
        assert NumpyHalf.of(upper) is not None, k
    assert all(half is not None for _, half in halves.values()), halves
    rng = np.random.default_rng(7)
    for mode, (model, half) in halves.items():
        shape = tuple(int(d) for d in model.input_shape[1:])
        assert half.input_shape == shape, mode
        # Inputs in the range each half sees: pixels, ReLU6 activations, or features.
        top = 255.0 if mode in ("raw", "full") else 6.0
        inputs = (rng.random((40, *shape)) * top).astype(np.float32)
        expected = np.asarray(model(inputs, training=False), np.float32)
        for size in (1, 3, 40):  # any batch: each row its own answer
            answered = half.predict(inputs[:size])
            assert answered.dtype == np.float32 and answered.shape == expected[:size].shape
            np.testing.assert_allclose(answered, expected[:size], atol=1e-5, err_msg=mode)
            assert np.array_equal(answered.argmax(axis=1), expected[:size].argmax(axis=1))


@pytest.mark.training
def test_convolutional_halves_get_a_graph_for_big_batches_after_serving_began(
    trained_registry: Path,
) -> None:
    """Serving starts in numpy; then a background thread builds a TensorFlow graph for
    each half with convolutions, which answers batches from GRAPH_FROM_BATCH on; dense
    halves stay in numpy. Either way, the same answers."""
    from cloud.registry import Registry
    from cloud.serving import GRAPH_FROM_BATCH, RegistryModels, deployable
    from tests.support.waiting import wait_for

    registry = Registry(trained_registry)
    models = RegistryModels(registry)
    models.warm_up((2,))
    halves = {
        str(entry.mode): models.load(entry)
        for entry in [*deployable(registry, (2,)), registry.serving(Mode("raw"))]
    }
    assert all(half._call is None for half in halves.values())  # numpy alone, at first
    models.build_graphs()
    convolutional = {"split:2", "raw", "full"}
    wait_for(lambda: all(halves[mode]._call is not None for mode in convolutional), 120, "graphs")
    assert all(halves[mode]._call is None for mode in set(halves) - convolutional)
    rng = np.random.default_rng(3)
    for mode in convolutional:
        half = halves[mode]
        assert half.numpy is not None
        top = 255.0 if mode in ("raw", "full") else 6.0
        batch = (rng.random((GRAPH_FROM_BATCH, *half.numpy.input_shape)) * top).astype(np.float32)
        np.testing.assert_allclose(
            half.predict(batch), half.numpy.predict(batch), atol=1e-5, err_msg=mode
        )


def test_a_half_with_a_layer_numpy_does_not_run_is_left_to_tensorflow() -> None:
    import keras

    from cloud.models.numpy_half import NumpyHalf
    from cloud.registry import keras_to_bytes

    dilated = keras.Sequential(
        [keras.Input((8, 8, 2)), keras.layers.Conv2D(3, 3, dilation_rate=2), keras.layers.Flatten()]
    )
    lstm = keras.Sequential([keras.Input((4, 3)), keras.layers.LSTM(2)])
    for model in (dilated, lstm):
        assert NumpyHalf.from_archive(keras_to_bytes(model)) is None
        assert NumpyHalf.of(model) is None
    with pytest.raises(ValueError, match=r"not a \.keras archive"):
        NumpyHalf.from_archive(b"PK not a zip")


@pytest.mark.training
def test_a_cloud_process_serves_the_registry_without_importing_tensorflow(
    trained_registry: Path,
) -> None:
    """What a restarted cloud does before its first answer: load and run every half it
    serves. TensorFlow's import alone is 4-5 s of CPU here (issue 24, item 5)."""
    import subprocess
    import sys

    from cloud.registry import Registry
    from cloud.serving import deployable

    halves = len(deployable(Registry(trained_registry), (2,))) + 1  # and the cloud-only CNN
    script = (
        "import sys\n"
        "from cloud.registry import Registry\n"
        "from cloud.serving import RegistryModels\n"
        f"warmed = RegistryModels(Registry({str(trained_registry)!r})).warm_up((2,))\n"
        "print(len(warmed), sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split(maxsplit=1) == [str(halves), "[]\n"], done.stdout + done.stderr


def test_a_scrape_of_a_port_that_answers_no_http_counts_it_unreachable() -> None:
    """Before a worker listens, a connection to its local port can be the client's own
    socket connected to itself, which reads back its request: not an endpoint, not a crash
    of whoever polls for readiness (seen once in test_gateway_cli as BadStatusLine)."""
    import socket
    import threading

    from edgelearn.metrics import fetch, scrape

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def echo() -> None:  # what a self-connected socket reads: its own request
            connection, _ = server.accept()
            with connection:
                connection.sendall(connection.recv(4096))

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}/metrics"
        assert fetch(url, timeout=5) is None
        thread.join(5)
    assert scrape([url], timeout=1).unreachable == (url,)
