"""What the benchmarks play: many cameras' frames (:mod:`cameras.replay`), rendered in two
threads, the distinct items they show, and the moments at which free-running cameras send."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cameras.replay import object_frames, scene_frames
from edgelearn import wire

GATEWAY_ID = "gw-1"


def render_cameras(
    cameras: int,
    frames_per_camera: int,
    *,
    dwell_frames: int,
    quality: int = 80,
    first_seed: int = 1,
) -> dict[str, list[wire.Frame]]:
    """:func:`scene_frames` of ``cam-1``...``cam-N``, seeds ``first_seed``, ``first_seed +
    1``...; OpenCV releases the GIL while it composes and encodes, so two threads render."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="render") as pool:
        rendered = list(
            pool.map(
                lambda index: scene_frames(
                    f"cam-{index + 1}",
                    frames_per_camera,
                    seed=first_seed + index,
                    dwell=dwell_frames,
                    quality=quality,
                ),
                range(cameras),
            )
        )
    return {frames[0].camera_id: frames for frames in rendered}


def render_object_cameras(
    cameras: int,
    frames_per_camera: int,
    *,
    quality: int = 80,
    first_seed: int = 1,
    first: int = 0,
) -> dict[str, list[wire.Frame]]:
    """:func:`object_frames` of ``cam-1``...``cam-N`` (seeds ``first_seed``...) from frame
    ``first``, rendered in two threads."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="render") as pool:
        rendered = list(
            pool.map(
                lambda index: object_frames(
                    f"cam-{index + 1}",
                    frames_per_camera,
                    seed=first_seed + index,
                    quality=quality,
                    first=first,
                ),
                range(cameras),
            )
        )
    return {frames[0].camera_id: frames for frames in rendered}


def items_shown(
    cameras: int, frames_per_camera: int, *, first_seed: int = 1, first: int = 0
) -> int:
    """How many distinct items :func:`render_object_cameras` with these arguments shows
    wholly in view at least once. Each item is seen in many frames, so a per-object accuracy
    is about as certain as a sample of this many items (95% within about 1.96 * sqrt(p (1 -
    p) / items))."""
    from cameras.scene import ObjectScene
    from edgelearn.datasets import load_fashion_mnist

    data = load_fashion_mnist("test")
    shown: set[tuple[int, int]] = set()
    for camera in range(cameras):
        scene = ObjectScene(data, seed=first_seed + camera)
        for number in range(first, first + frames_per_camera):
            frame = scene.render(number)
            height, width = frame.image.shape[:2]
            shown.update(
                (camera, item.item)
                for item in frame.objects
                if item.box[0] > 0
                and item.box[1] > 0
                and item.box[2] < width
                and item.box[3] < height
            )
    return len(shown)


@dataclass(frozen=True)
class Tick:
    number: int  # the camera's frame number
    camera: int  # index of the camera
    late: float  # seconds the send was past its moment (0 when on time)


def paced(
    cameras: int,
    fps: float,
    *,
    seconds: float | None = None,
    frames_per_camera: int | None = None,
) -> Iterator[Tick]:
    """Every camera's next frame as it falls due, sleeping until then: camera ``i`` of
    ``n`` sends frame ``k`` at ``k / fps + i / (n * fps)`` after the start (free-running
    cameras are out of step), for ``seconds`` or ``frames_per_camera`` frames each."""
    period = 1.0 / fps
    started = time.monotonic()
    tick = 0
    while True:
        number, index = divmod(tick, cameras)
        offset = number * period + index * period / cameras
        if seconds is not None and offset >= seconds:
            return
        if frames_per_camera is not None and number >= frames_per_camera:
            return
        delay = started + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing: this frame is not due yet
        yield Tick(number, index, max(0.0, -delay))
        tick += 1
