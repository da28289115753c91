#!/usr/bin/env bash
# Debian packages the test suite and benchmarks use. Installed only when missing; needs root (CI
# and the dev machines run as root) or sudo.
set -euo pipefail
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
# The browser test (tests/test_browser.py) drives Debian's Chromium with Playwright; Playwright's
# own browser download is never used.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)  # text in screenshots
# Background photos for generated shop-the-look scenes (recommend/scene_backgrounds.py), for the
# benchmarks only (`make bench` sets LOOKALIKE_SCENE_PHOTOS=1): tests and the demo generate scenes
# without them (scikit-image's photos and procedural textures).
if [ "${LOOKALIKE_SCENE_PHOTOS:-0}" = 1 ]; then
  [ -d /usr/share/backgrounds/gnome ] || need+=(gnome-backgrounds)
  [ -d /usr/share/backgrounds/mate ] || need+=(mate-backgrounds)
  [ -d /usr/share/desktop-base ] || need+=(desktop-base)
fi
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
