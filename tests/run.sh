#!/usr/bin/env bash
# Run every test: unit tests and the one integration-test binary (tests/it),
# which starts its own slapd and Podman API service with private config.
# Installs the Debian packages the tests need first. Run as root (rootful Podman).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "tests/run.sh: run as root (the tests drive rootful Podman)" >&2; exit 1; }
bash deploy/install-deps.sh
cargo test --locked --lib --bins --tests
