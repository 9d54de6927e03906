"""A real RTSP server for the tests: GStreamer's (``gst-rtsp-server``, Debian's
``gir1.2-gst-rtsp-server-1.0``), run by the system Python with its ``gi`` bindings, serving a
live 15 fps test pattern as RTP/JPEG on ``rtsp://127.0.0.1:PORT/cam``. It can be killed and
started again on the same port, as a camera's server going away and coming back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgelearn.ports import free_port
from tests.support.waiting import wait_for

SYSTEM_PYTHON = Path("/usr/bin/python3")  # where Debian's python3-gi lives
SERVER = """
import sys, gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_service(sys.argv[1])
media = GstRtspServer.RTSPMediaFactory()
media.set_launch(
    "( videotestsrc is-live=true pattern=ball"
    " ! video/x-raw,format=I420,width=640,height=360,framerate=15/1"
    " ! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )"
)
media.set_shared(True)
server.get_mount_points().add_factory("/cam", media)
if server.attach(None) == 0:
    sys.exit("cannot listen on port " + sys.argv[1])
print("ready", flush=True)
GLib.MainLoop().run()
"""


class RtspServer:
    def __init__(self) -> None:
        if not SYSTEM_PYTHON.is_file():
            raise AssertionError(f"{SYSTEM_PYTHON} is missing: setup.sh installs python3-gi")
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        process = subprocess.Popen(
            [str(SYSTEM_PYTHON), "-c", SERVER, str(self.port)],
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
        )
        self._process = process
        assert process.stdout is not None
        line = process.stdout.readline()  # "ready", or nothing if it died
        if line.strip() != "ready":
            process.wait(10)
            raise AssertionError(
                f"the RTSP server did not start (exit {process.returncode}): setup.sh installs "
                "python3-gi, gir1.2-gst-rtsp-server-1.0 and GStreamer's good plugins"
            )

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
            wait_for(lambda: self._process is None or self._process.poll() is not None, 10)
        self._process = None

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
