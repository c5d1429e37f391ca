#!/bin/sh
# The Debian packages gmemlab's optional parts use, installed with apt-get:
#   chromium  - the tests open `gmemlab check --html` reports in a headless browser
#   graphviz  - `dot` draws each design's page state machine (docs/DESIGNS.md)
#   spin      - bench/check_vs_spin.py checks the checker against SPIN
#   binutils  - GNU as assembles the guest programs (usually present already)
# Usage: scripts/install-system-deps.sh [PACKAGE...]   (default: all of them)
# Run as root (or through sudo).  The test suite calls it for a package it
# needs when the package is missing and apt-get can run; otherwise those
# tests skip with the reason.
set -eu
packages="${*:-chromium graphviz spin binutils}"
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $packages
