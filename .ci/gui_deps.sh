#!/usr/bin/env bash
# System libraries for the napari GUI tests (a real viewer under a virtual X display, Xvfb).
# Installs the missing ones with apt-get when run as root (CI, containers); otherwise prints the
# command to run and carries on (the GUI tests then skip: no display can be started).
set -u
PKGS="xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 libxcb-cursor0 libxcb-xfixes0
libegl1 libgl1 libdbus-1-3"
command -v dpkg-query >/dev/null 2>&1 || { echo "gui_deps: not a Debian/Ubuntu system; install Xvfb and Qt's xcb libraries yourself" >&2; exit 0; }
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "gui_deps: missing:$missing — run: sudo apt-get install -y$missing (GUI tests skip without it)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $missing >/dev/null; } || {
  echo "gui_deps: apt-get could not install:$missing" >&2; exit 1; }
