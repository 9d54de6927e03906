"""A restarted cloud answers without TensorFlow: the cloud halves' float LiteRT twins
(cloud.serving), made in the background the first time a half loads, answer as the Keras
halves do, and a fresh process serving from them never imports TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cloud.registry import Registry
from cloud.serving import RegistryModels, deployable
from edgelearn.modes import RAW, Mode
from tests.support.waiting import wait_for

_SERVE = """
import json, sys, time
from pathlib import Path
import numpy as np
from cloud.registry import Registry
from cloud.serving import RegistryModels
registry, cache, inputs = Registry(Path(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]
models = RegistryModels(registry, serving_cache=cache)
started = time.perf_counter()
answers = {}
for version, batch in np.load(inputs).items():
    entry = registry.by_version(version)
    answers[version] = models.load(entry).predict(batch).tolist()
print(json.dumps({"seconds": time.perf_counter() - started, "answers": answers,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def test_the_litert_twins_answer_as_the_keras_halves_and_need_no_tensorflow(
    trained_registry: Path, tmp_path: Path
) -> None:
    registry = Registry(trained_registry)
    cache = tmp_path / "serving"
    entries = deployable(registry, (2,))
    entries.append(registry.serving(Mode(RAW)))
    first = RegistryModels(registry, serving_cache=cache)
    rng = np.random.default_rng(3)
    inputs: dict[str, np.ndarray] = {}
    keras: dict[str, np.ndarray] = {}
    for entry in entries:
        classifier = first.load(entry)
        assert classifier.model is not None and classifier.lite is None  # no twin yet
        if classifier.takes_frames or entry.mode.kind == "full":
            shape = tuple(entry.input_shape)
            batch = rng.integers(0, 256, (16, *shape)).astype(np.float32)
        else:
            output = entry.metadata["quantization"]["output"]
            batch = rng.normal(0, 2, (16, *output["shape"])).astype(np.float32)
        inputs[entry.version] = batch
        keras[entry.version] = classifier.predict(batch)
    twins = [cache / f"{e.metadata['files']['cloud']['sha256']}.tflite" for e in entries]
    wait_for(lambda: all(twin.exists() for twin in twins), 120, "every twin made")
    saved = tmp_path / "inputs.npz"
    np.savez(saved, **inputs)  # type: ignore[arg-type]  # numpy's stub types **kwds oddly
    done = subprocess.run(
        [sys.executable, "-c", _SERVE, str(trained_registry), str(cache), str(saved)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served["tensorflow"] is False  # a restart loads no TensorFlow to answer
    for version, expected in keras.items():
        answer = np.asarray(served["answers"][version], np.float32)
        assert answer.shape == expected.shape
        assert np.abs(answer - expected).max() < 1e-3, version
        assert (answer.argmax(1) == expected.argmax(1)).all(), version
