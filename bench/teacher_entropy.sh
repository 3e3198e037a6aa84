#!/bin/bash
# Issue 25 item 3: the teacher's target conditional entropy (teacher.w_ent, VADA's target term)
# on both development sets, centralized, seed 0, every other setting the default. The baseline
# row reuses the cached default teachers (TEACHERS_HAR / TEACHERS_HHAR, each OUT/teachers of an
# earlier default run); each w_ent trains its own. Rows behind BENCHMARKS.md "The teacher's
# target entropy".
#
#   bash bench/teacher_entropy.sh OUT base|W [...]     e.g. bash bench/teacher_entropy.sh OUT base 0.1 1
#   SEEDS=1,2 SETS=har bash bench/teacher_entropy.sh OUT2 base 0.1   (more seeds, one set; OUT2 its own folder)
# The HAR cache holds seed 0 only: the baseline trains the other seeds' default teachers.
set -euo pipefail
OUT=${1:?OUT}; shift
SEEDS=${SEEDS:-0}
HAR=${HAR:-../shared/data/HAR}; HHAR=${HHAR:-../shared/data/HHAR_SA}
TEACHERS_HAR=${TEACHERS_HAR:-/work/teacher-cache/har-dev-recipe/teachers}
TEACHERS_HHAR=${TEACHERS_HHAR:-/work/teacher-cache/hhar-recipe/teachers}
for V in "$@"; do
  for SET in ${SETS:-har hhar}; do
    if [ "$SET" = har ]; then DATA=$HAR; DS=HAR; PAIRS=configs/har-dev-pairs.txt; CACHE=$TEACHERS_HAR
    else DATA=$HHAR; DS=HHAR; PAIRS=configs/hhar-sa-dev-pairs.txt; CACHE=$TEACHERS_HHAR; fi
    DIR="$OUT/$SET-$V"; mkdir -p "$DIR"
    if [ "$V" = base ]; then ARGS=()
      [ -e "$DIR/teachers" ] || { mkdir -p "$DIR/teachers"; cp -n "$CACHE"/* "$DIR/teachers/"; }
    else ARGS=(--set teacher.w_ent="$V"); fi
    unikd bench central --data "$DATA" --dataset "$DS" --scenarios "$(tail -1 $PAIRS)" \
      --seeds "$SEEDS" --methods unikd --out "$DIR" --jobs 1 --quiet --label "went-$V" "${ARGS[@]}"
  done
done
echo DONE
