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
# Build the shared slim base once, before tests run in parallel (layers are cached, so this
# is quick when nothing changed). The environment test builds the full profile beside it.
tmp=$(mktemp -d)
target/debug/spritesd image build --profile slim --data-dir "$tmp" --image-dir "$SPRITES_TEST_IMAGE_DIR"
rm -rf "$tmp"
# A real S3-compatible server for the object-store tests of checkpoints.
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    cargo install s3s-fs@0.14.1 --locked --features binary --quiet
fi
cargo test --workspace --quiet
SPRITESD_BIN="$PWD/target/debug/spritesd" bash tests/python/run.sh
(cd tests/js && npm ci --no-audit --no-fund --engine-strict=false --loglevel=error && SPRITESD_BIN="$OLDPWD/target/debug/spritesd" npm test)
