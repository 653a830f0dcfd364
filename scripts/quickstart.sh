#!/usr/bin/env bash
# The main job: build, start spritesd on its embedded defaults (SQLite + local folder under
# /var/lib/sprites), log the CLI in, create sprite "demo" and run `uname -a` inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release --workspace --bins
for b in spritesd sprite sprite-agent; do
    ln -sf "$PWD/target/release/$b" "/usr/local/bin/$b"
done

export SPRITES_API_URL=${SPRITES_API_URL:-http://127.0.0.1:7780}
data=${SPRITES_DATA_DIR:-/var/lib/sprites}
if ! curl -fsS "$SPRITES_API_URL/healthz" >/dev/null 2>&1; then
    # The first start builds the base image from Debian's packages and npm, layer by layer
    # (the full profile: about 8 minutes once; SPRITES_IMAGE_PROFILE=slim for a small one).
    # Cached layers make later runs take a second.
    spritesd image build --data-dir "$data"
    nohup spritesd serve --data-dir "$data" >/var/log/spritesd.log 2>&1 &
    for _ in $(seq 1 600); do
        curl -fsS "$SPRITES_API_URL/healthz" >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
echo "spritesd is up at $SPRITES_API_URL (log: /var/log/spritesd.log)"

sprite auth setup --token "$(cat "$data/admin-token")"
sprite list | grep -qx 'demo.*' || sprite create demo --skip-console
sprite exec -s demo -- uname -a
echo "web console: $SPRITES_API_URL/ (sign in with the token in $data/admin-token)"
