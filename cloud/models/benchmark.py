"""The models half of issue 5's comparison, runnable alone: ``python -m cloud.models.benchmark``.

Trains the cloud-only baseline (full CNN on frames) and, on the same items, the cloud halves
of every edge mode from stored int8 features (split at several ``k``, PCA, autoencoder);
reports per mode held-out accuracy, training wall time and bytes of training input, and per
boundary ``k`` the int8 output bytes, FLOPs, float vs int8 accuracy and LiteRT latency.
Optionally checks that training renders (320x180) predict like real 720p camera frames.

No MQTT here: the end-to-end benchmark (the lead's) runs the same models through brokers.
Prints a text report and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud.models import cnn, evaluation, features, profile, training
from cloud.models.artifacts import LiteRtExtractor, PcaExtractor, measure_latency
from cloud.models.data import RenderedDataset, build_dataset
from cloud.models.export import export_int8

log = logging.getLogger(__name__)


def run(
    *,
    n_train: int,
    n_held_out: int,
    epochs: int,
    seed: int,
    ks: Sequence[int],
    dims: Sequence[int],
    render_check_items: int,
    cache: Path | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {"n_train": n_train, "n_held_out": n_held_out, "epochs": epochs}
    start = time.perf_counter()
    if cache is not None and cache.exists():
        data = RenderedDataset.load(cache)
    else:
        data = build_dataset(n_train, n_held_out, seed=seed)
        if cache is not None:
            data.save(cache)
    report["render_seconds"] = time.perf_counter() - start
    log.info("data ready (%.1f s)", report["render_seconds"])

    raw = training.train_cnn(data, epochs=epochs, seed=seed)
    report["raw"] = raw.summary()
    log.info("raw: %s", raw.summary())
    model = raw.model
    rows = profile.profile_cnn(model)
    frames = data.held_out.inputs[:200]
    boundaries = []
    modes: dict[str, Any] = {"raw": raw.summary()}
    for k in range(1, cnn.num_blocks(model) + 1):
        full = k == cnn.num_blocks(model)
        part = model if full else cnn.split(model, k)[0]
        export = export_int8(part, data.train.inputs)
        extractor = LiteRtExtractor("full" if full else "split", export.flatbuffer)
        if full:
            int8_accuracy = evaluation.full_accuracy(export, data.held_out)
        else:
            int8_accuracy = evaluation.split_accuracy(model, k, export, data.held_out)[1]
        boundaries.append(
            {
                **profile.profile_as_dicts([rows[k]])[0],
                "int8_accuracy": int8_accuracy,
                "float_accuracy": raw.held_out_accuracy,
                "latency_seconds": measure_latency(extractor, frames, repeats=2),
                "artifact_bytes": len(export.flatbuffer),
            }
        )
        if k in ks and not full:
            stored = evaluation.features_from(extractor, data.train)
            held_out = evaluation.features_from(extractor, data.held_out)
            upper = training.train_upper_from_features(
                stored, held_out, config=cnn.CnnConfig(), k=k, epochs=epochs, seed=seed
            )
            modes[f"split:{k}"] = upper.summary()
            log.info("split:%d: %s", k, upper.summary())
    report["boundaries"] = boundaries

    for dim in dims:
        projection = features.fit_pca(data.train.inputs, dim, seed=seed)
        pca_extractor = PcaExtractor(projection)
        result = training.train_feature_classifier(
            evaluation.features_from(pca_extractor, data.train),
            evaluation.features_from(pca_extractor, data.held_out),
            classes=data.num_classes,
            seed=seed,
        )
        modes[f"pca:{dim}"] = result.summary()
        log.info("pca:%d: %s", dim, result.summary())
        fit = features.train_autoencoder(data.train.inputs, dim, epochs=epochs, seed=seed)
        encoder = LiteRtExtractor(
            "autoencoder", export_int8(fit.encoder, data.train.inputs).flatbuffer
        )
        result = training.train_feature_classifier(
            evaluation.features_from(encoder, data.train),
            evaluation.features_from(encoder, data.held_out),
            classes=data.num_classes,
            seed=seed,
        )
        modes[f"autoencoder:{dim}"] = {
            **result.summary(),
            "encoder_training_seconds": fit.wall_seconds,
        }
        log.info("autoencoder:%d: %s", dim, modes[f"autoencoder:{dim}"])
    report["modes"] = modes

    if render_check_items:
        from cameras.datasets import load_fashion_mnist

        comparison = evaluation.compare_render_paths(
            model, load_fashion_mnist("test"), render_check_items, seed=seed
        )
        report["render_paths"] = dataclasses.asdict(comparison)
    report["profile_table"] = profile.format_profile(
        rows, {b["k"]: b["latency_seconds"] for b in boundaries}
    )
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['n_train']} training / {report['n_held_out']} held-out items, "
        f"{report['epochs']} epochs",
        "",
        report["profile_table"],
        "",
        f"{'k':>2} {'float acc':>9} {'int8 acc':>9} {'lower ms':>9} {'artifact B':>10}",
    ]
    for row in report["boundaries"]:
        lines.append(
            f"{row['k']:>2} {row['float_accuracy']:>9.4f} {row['int8_accuracy']:>9.4f} "
            f"{row['latency_seconds'] * 1e3:>9.3f} {row['artifact_bytes']:>10}"
        )
    lines += ["", f"{'mode':<16} {'accuracy':>8} {'train s':>8} {'input bytes':>12}"]
    for mode, summary in report["modes"].items():
        lines.append(
            f"{mode:<16} {summary['held_out_accuracy']:>8.4f} {summary['wall_seconds']:>8.1f} "
            f"{summary['input_bytes']:>12}"
        )
    if "render_paths" in report:
        lines += ["", f"render paths: {report['render_paths']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ks", type=int, nargs="*", default=[4, 6, 8])
    parser.add_argument("--dims", type=int, nargs="*", default=[32])
    parser.add_argument("--render-check", type=int, default=0, help="paired 720p frames")
    parser.add_argument("--cache", type=Path, help="rendered data set .npz (reused if present)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = run(
        n_train=args.train,
        n_held_out=args.held_out,
        epochs=args.epochs,
        seed=args.seed,
        ks=args.ks,
        dims=args.dims,
        render_check_items=args.render_check,
        cache=args.cache,
    )
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
