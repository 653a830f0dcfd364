#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and integration tests against
# a real spritesd, and the official Python SDK against it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

export SPRITES_TEST_IMAGE_DIR=${SPRITES_TEST_IMAGE_DIR:-/var/cache/sprites/images}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
# Build the shared base image once, before tests run in parallel.
if [ ! -f "$SPRITES_TEST_IMAGE_DIR/base/image.json" ]; then
    tmp=$(mktemp -d)
    target/debug/spritesd image build --data-dir "$tmp" --image-dir "$SPRITES_TEST_IMAGE_DIR"
    rm -rf "$tmp"
fi
cargo test --workspace --quiet
SPRITESD_BIN="$PWD/target/debug/spritesd" bash tests/python/run.sh
(cd tests/js && npm ci --no-audit --no-fund --engine-strict=false --loglevel=error && SPRITESD_BIN="$OLDPWD/target/debug/spritesd" npm test)
