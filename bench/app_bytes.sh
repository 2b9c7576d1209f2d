#!/usr/bin/env bash
# What the app sends to its terminal (SSH bandwidth) while a job runs, per screen:
#   bash bench/app_bytes.sh [REPO]     (REPO: a checkout to measure, default this one)
# The app runs in tmux (100x30) under `script -f`, whose output file grows with every byte the
# app writes; a fake running job (bench/app_bytes_feed.py) steps 4x a second. Needs tmux.
set -uo pipefail
repo=$(cd "${1:-$(dirname "$0")/..}" && pwd)
py=${PYTHON:-python}
for key in 3 2 ""; do
  work=$(mktemp -d)
  export COPYLORA_HOME=$work/state COPYLORA_IMAGES=0 OMP_NUM_THREADS=1 PYTHONPATH=$repo
  "$py" "$repo/bench/app_bytes_feed.py" "$repo" "$work" & feed=$!
  while [ ! -f "$work/ready" ]; do sleep 0.2; done
  tmux -L app-bytes new-session -d -s s -x 100 -y 30 "cd $work && script -q -f $work/out -c '$py -m copylora_tui'"
  sleep 6
  [ -n "$key" ] && tmux -L app-bytes send-keys -t s "$key"
  sleep 4
  a=$(stat -c %s "$work/out"); sleep 20; b=$(stat -c %s "$work/out")
  echo "$(case $key in 3) echo Monitor;; 2) echo Queue;; *) echo Projects;; esac): $(( (b - a) / 20 )) bytes/s"
  # script(1) outlives tmux with its own terminal, and the app on it: end script, and the app
  # hangs up with its terminal
  tmux -L app-bytes kill-server; pkill -f "script -q -f $work/out"; kill $feed; sleep 1; rm -rf "$work"
done
