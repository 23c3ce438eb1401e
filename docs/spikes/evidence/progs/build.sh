#!/bin/sh
# Build the spike's test targets. No frame pointers are forced anywhere.
set -eu
cd "$(dirname "$0")"
mkdir -p bin
gcc -O2 -g -pthread -o bin/deadlock deadlock.c
( cd rust-deadlock && CARGO_TARGET_DIR=../../target cargo build -j1 --release -q )
cp ../target/release/rust-deadlock bin/rust-deadlock
gcc -O2 -g -pthread -o bin/eintr eintr.c
