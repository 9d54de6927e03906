"""What a subscriber of the results sees of a camera the teacher names: never scored against
the data set, its answers counted by class, and agreement counted once per labeled track."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgelearn import wire
from edgelearn.config import BrokerConfig
from stack.observer import ResultsObserver, scored_objects
from stack.up import render_summary, with_teacher_report


def _result(seq: int, tracks: tuple[int, ...], labels: Any, classes: Any, task: str) -> bytes:
    count = len(tracks)
    return wire.encode(
        wire.Result(
            "video-1",
            seq,
            seq,
            seq,
            "gw-1",
            "split:8",
            labels[0],
            classes[0],
            0.9,
            "v1",
            wire.ComputedAt.CLOUD,
            0,
            0,
            tracks=tracks,
            boxes=tuple((0, 0, 10 + i, 20) for i in range(count)),
            labels=labels,
            classes=classes,
            scores=(0.9,) * count,
            task=task,
        )
    )


def test_a_teacher_cameras_answers_count_as_agreement_per_track_not_accuracy() -> None:
    now = [100.0]
    observer = ResultsObserver(BrokerConfig(), clock=lambda: now[0])
    person, other, unknown = 0, 1, wire.UNKNOWN
    # track 1: first labeled answer agrees (its later answers do not count again)
    observer.add(_result(1, (1, 2), (None, None), (unknown, unknown), wire.TASK_TEACHER))
    observer.add(_result(2, (1, 2), (person, None), (person, unknown), wire.TASK_TEACHER))
    observer.add(_result(3, (1,), (person,), (other,), wire.TASK_TEACHER))
    now[0] = 500.0
    # track 2 labeled other, answered unknown: disagrees; track 3 agrees
    observer.add(_result(4, (2, 3), (other, person), (unknown, person), wire.TASK_TEACHER))
    assert (
        scored_objects(wire.decode_as(_result(4, (3,), (0,), (0,), "teacher"), wire.Result), 0)
        == []
    )
    assert observer.scored() == []  # none of it is a data set's accuracy
    report = observer.teacher_report(recent_seconds=300)["video-1"]
    assert report["labeled_objects"] == 3
    assert report["agreement"]["accuracy"] == round(2 / 3, 4) and report["agreement"]["items"] == 3
    assert report["agreement_last_300s"]["items"] == 2  # tracks 2 and 3 came in the last 5 min
    assert report["agreement_answered"]["items"] == 2 and report["first_unknown"] == 1
    by_label = report["agreement_by_label"]
    assert by_label["person"]["items"] == 2 and by_label["person"]["accuracy"] == 1.0
    assert by_label["other moving object"]["correct"] == 0
    assert report["answers"] == {"unknown": 4, "person": 2, "other moving object": 1}
    # an answer in a class the teacher does not have would be counted as such
    observer.add(_result(5, (9,), (None,), (4,), wire.TASK_TEACHER))
    assert observer.teacher_report()["video-1"]["answers"]["labeled-set class"] == 1

    summary: dict[str, Any] = {
        "results": 5, "modes": {}, "sent_bytes": 1, "raw_bytes": 1000, "uplink_reduction": 0.999,
        "delivery": {"features_sent": 5, "acknowledged": 5, "waiting": 0, "resent": 0,
                     "duplicates_at_cloud": 0, "given_up": {}},
        "dropped": {},
        "cameras": {"video-1": {
            "fps": 15.0, "frames": 100, "keyframe_ratio": 0.5, "raw_bytes": 1000,
            "sent_bytes": 1, "objects": {},
            "teacher": {"looks": 9, "labeled": 3, "labels_sent": 4, "cpu_seconds": 1.5,
                        "rate": 0.1},
        }},
    }  # fmt: skip
    with_teacher_report(summary, observer.teacher_report(recent_seconds=300))
    taught = summary["cameras"]["video-1"]["teacher"]
    assert taught["looks"] == 9 and taught["labeled_objects"] == 3
    line = next(x for x in render_summary(summary, 60.0).splitlines() if x.startswith("video-1"))
    # a student's first answers, apart from the objects first seen before there was one
    assert "teacher: answered objects agree 100.0% (2 objects), 1 of 3 first seen before" in line
    assert "unknown 50%, 1 labeled-set classes, CPU 1.5 s, rate 10%" in line


def _feature(seq: int, tracks: tuple[int, ...], rows: list[list[int]]) -> bytes:
    from edgelearn import codec

    values = np.asarray(rows, np.int8)
    return wire.encode(
        codec.encode_array(values, scale=0.1, zero_point=0).feature(
            camera_id="video-1",
            seq=seq,
            capture_ns=seq,
            gateway_id="gw-1",
            label=None,
            mode="split:8",
            model_version="v1",
            raw_bytes=1000,
            held_back=0,
            held_mismatched=0,
            tracks=tracks,
            boxes=((0, 0, 10, 20),) * len(tracks),
            labels=(None,) * len(tracks),
            task=wire.TASK_TEACHER,
        )
    )


def test_a_looped_videos_twin_tracks_are_one_object_of_evidence() -> None:
    """vtest.avi replays: the same person walks by again as a new track, with bit-identical
    features. The twin's answer comes from a student that may have learned the first pass,
    so the observer does not count it as new evidence."""
    observer = ResultsObserver(BrokerConfig())
    person = 0
    walker, other_walker = [1, 2, 3, 4], [5, 6, 7, 8]
    observer.add(_feature(1, (1, 2), [walker, other_walker]))
    observer.add(_result(2, (1, 2), (person, person), (person, person), wire.TASK_TEACHER))
    # the loop: track 7 shows the first walker's pixels again (one row the same), track 8
    # someone new; a row of one value (an empty crop) identifies nobody
    observer.add(_feature(3, (7, 8), [[9, 9, 9, 9], [1, 1, 2, 2]]))
    observer.add(_feature(4, (7, 8), [walker, [4, 4, 2, 1]]))
    observer.add(_result(5, (7, 8), (person, person), (person, wire.UNKNOWN), wire.TASK_TEACHER))
    report = observer.teacher_report()["video-1"]
    assert report["labeled_objects"] == 3  # walker, other walker, the new one: not track 7
    assert report["agreement"]["items"] == 3 and report["agreement"]["correct"] == 2
    assert observer.undecodable == 0


def test_the_summary_counts_predicted_classes_apart_by_task() -> None:
    """A teacher's ``person`` and a data set's ``T-shirt/top`` are both class 0: the
    summary names each task's classes apart, never one list mixing them."""
    from edgelearn.metrics import Samples
    from stack.up import summarize

    name = "edgelearn_cloud_predictions_total"
    rows = (
        (name, {"mode": "split:8", "task": "dataset", "class_name": "Dress"}, 7.0),
        (name, {"mode": "split:8", "task": "dataset", "class_name": "Bag"}, 3.0),
        (name, {"mode": "split:8", "task": "teacher", "class_name": "person"}, 40.0),
        (name, {"mode": "split:8", "task": "teacher", "class_name": "unknown"}, 5.0),
    )
    summary = summarize(Samples(rows))
    assert summary["predicted"] == {"Dress": 7.0, "Bag": 3.0}
    assert summary["predicted_teacher"] == {"person": 40.0, "unknown": 5.0}


def test_two_cloud_processes_report_the_registry_they_share_once_not_summed() -> None:
    """Under ``up --clouds 2`` both processes export the registry's generations and held-out
    accuracies: the summary shows them once (the highest), while counters still add up."""
    from edgelearn.metrics import Samples
    from stack.up import summarize

    rows = tuple(
        row
        for version in ("a", "b")  # two processes, one registry
        for row in (
            ("edgelearn_cloud_model_generation", {"family": "cnn", "p": version}, 3.0),
            ("edgelearn_cloud_model_heldout_accuracy_ratio",
             {"mode": "split:8", "p": version}, 0.84),
            ("edgelearn_cloud_model_heldout_items", {"mode": "split:8", "p": version}, 2000.0),
            ("edgelearn_cloud_generation_training", {"p": version}, 4.0 if version == "a" else 0),
            ("edgelearn_cloud_predictions_total",
             {"mode": "split:8", "task": "dataset", "class_name": "Bag", "p": version}, 5.0),
        )
    )  # fmt: skip
    models = summarize(Samples(rows))["models"]
    assert models["generation"] == {"cnn": 3}
    assert models["held_out_accuracy"] == {"split:8": 0.84}
    assert models["held_out_items"] == {"split:8": 2000}
    assert models["training_generation"] == 4
    assert summarize(Samples(rows))["predicted"] == {"Bag": 10.0}
