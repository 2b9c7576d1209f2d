#!/usr/bin/env bash
# Builds the folders the device tool carries to a lent GPU box (it has no package registry), so
# that a session given a GPU can run `bash bench/gpu_issue26.sh …` at once instead of spending
# its first ten minutes on this. Run it in the repository root, on this machine:
#
#   bash bench/gpu_prepare.sh [SD_SCRIPTS_GIT_DIR]
#
# .whl        our wheels (diffusers, bitsandbytes trimmed to the box's CUDA, tomli_w, importlib_metadata)
# .whl-kohya  sd-scripts' own pinned packages, less those the box's image has (hf_xet, regex, einops)
# .kohya      sd-scripts' train_network.py, library/ and networks/, from a fetched snapshot: the
#             workplace's `fetch github:kohya-ss/sd-scripts` gives SD_SCRIPTS_GIT_DIR (a bare git
#             folder such as /work/.mirror/kohya-ss+sd-scripts/repo); without it .kohya is left out
#             and the kohya phase is skipped.
# All three are added to .git/info/exclude (never committed). The device tool carries 64 MiB a
# call in all; the sizes are printed against it.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate 2>/dev/null || true

CUDA_TAG=${CUDA_TAG:-cuda130}  # the bitsandbytes library the lent H100/H200 image loads
download() {  # run the --print-download line that writes into folder $1
  local line
  line=$(python bench/gpu_acceptance.py --print-download | grep -E -- "-d $1 " | head -1)
  [ -n "$line" ] || { echo "gpu_prepare: --print-download names no '-d $1' line" >&2; exit 1; }
  rm -rf "$1" && mkdir -p "$1"
  eval "${line/python3/python}" >/dev/null
}

download .whl
python bench/gpu_acceptance.py --trim-wheel .whl/bitsandbytes-*.whl "$CUDA_TAG"
download .whl-kohya
rm -f .whl-kohya/hf_xet-*.whl .whl-kohya/regex-*.whl .whl-kohya/einops-*.whl

if [ $# -ge 1 ]; then
  rm -rf .kohya && mkdir -p .kohya
  # A snapshot may lack its largest files (sd-scripts' Windows DLLs): git names them on stderr
  # even outside the paths asked for, so the three are checked by their count instead.
  git --git-dir="$1" archive HEAD train_network.py library networks 2>/dev/null | tar -x -C .kohya
  want=$(git --git-dir="$1" ls-tree -r HEAD --name-only -- train_network.py library networks | wc -l)
  [ "$(find .kohya -type f | wc -l)" -eq "$want" ] || { echo "gpu_prepare: .kohya is missing files of $1" >&2; exit 1; }
  echo "gpu_prepare: .kohya from $(git --git-dir="$1" log --oneline -1 HEAD)"
fi

mkdir -p .git/info
for path in .whl .whl-kohya .kohya gpu-out; do
  grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done
for folder in .whl .whl-kohya .kohya; do
  [ -d "$folder" ] && printf '%-11s %6.1f MiB\n' "$folder" "$(du -sb "$folder" | awk '{print $1 / 1048576}')"
done
total=$(du -scb .whl .whl-kohya $( [ -d .kohya ] && echo .kohya ) | tail -1 | awk '{print $1}')
printf 'carried     %6.1f MiB of 64 (the sd15 call carries all three; the others .whl only)\n' "$(awk -v t="$total" 'BEGIN {print t / 1048576}')"
[ "$total" -le $((64 * 1048576)) ] || { echo "gpu_prepare: over the device tool's 64 MiB a call" >&2; exit 1; }
