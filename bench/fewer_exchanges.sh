#!/bin/bash
# Issue 26: exchanges against MF1 on both development sets (seed 0, K=5 IID), the runs behind
# BENCHMARKS.md "Fewer exchanges: the default chosen". One process at a time (--jobs 1).
#
#   bash bench/fewer_exchanges.sh OUT [student|teacher|whole|main]...
#
# student: the student's L on cached centralized recipe teachers (HAR_TEACHERS, HHAR_TEACHERS:
#          `unikd bench central` outputs); teacher: the federated teacher alone against its L and
#          server step (bench/teacher_steps.py); whole: teacher and student federated, the
#          default; main: the main job (`unikd federate`, no flags but the recipe's three).
# Tables: python3 bench/summarize_exchanges.py OUT/<run> ...; stopping rule:
#         PYTHONPATH=$PWD python3 bench/stop_rule.py OUT/<run>/curves/<label>
set -euo pipefail
OUT=${1:?OUT}; shift
HAR=${HAR:-../shared/data/HAR}; HHAR=${HHAR:-../shared/data/HHAR_SA}
HAR_TEACHERS=${HAR_TEACHERS:-/work/teacher-cache/har-dev-recipe}
HHAR_TEACHERS=${HHAR_TEACHERS:-/work/teacher-cache/hhar-recipe}
export PYTHONPATH=$PWD
R=(--set teacher.ensemble=3 --set distill.reference_compat=true --set distill.cross_kd=expected)
bench() { # dataset-folder dataset pairs-file out label [teachers] -- extra sets
  local data=$1 ds=$2 pairs=$3 out=$4 label=$5 teach=$6; shift 6
  nice -n 10 unikd bench federated --data "$data" --dataset "$ds" --scenarios "$(tail -1 "$pairs")" \
    --seeds 0 --clients 5 --partition iid ${teach:+--teachers "$teach"} --out "$out" --jobs 1 \
    --quiet --label "$label" "${R[@]}" "$@"
}
for what in "$@"; do
  case $what in
    student)
      bench "$HAR" HAR configs/har-dev-pairs.txt "$OUT/har-student-L1" L1 "$HAR_TEACHERS" \
        --set fed.local_steps_mode=edge
      for L in 10; do
        bench "$HAR" HAR configs/har-dev-pairs.txt "$OUT/har-student-L$L" "L$L" "$HAR_TEACHERS" \
          --set fed.local_steps_mode=both --set fed.local_steps=$L
        bench "$HHAR" HHAR configs/hhar-sa-dev-pairs.txt "$OUT/hhar-student-L$L" "L$L" \
          "$HHAR_TEACHERS" --set fed.local_steps_mode=both --set fed.local_steps=$L
      done ;;
    teacher)
      B=(--base teacher.ensemble=3 --base distill.reference_compat=true --base distill.cross_kd=expected)
      V=(--variant "L10-sqrt=fed.local_steps_mode=both,fed.local_steps=10"
         --variant "L10-repeat=fed.local_steps_mode=both,fed.local_steps=10,fed.teacher_server_step=repeat")
      nice -n 10 python3 bench/teacher_steps.py --out "$OUT/teacher-synth.json" "${B[@]}" "${V[@]}"
      nice -n 10 python3 bench/teacher_steps.py --out "$OUT/teacher-har.json" "${B[@]}" "${V[@]}" \
        --data "$HAR" --dataset HAR --scenarios "4->7" ;;
    whole)
      bench "$HAR" HAR configs/har-dev-pairs.txt "$OUT/har-whole-default" default "" ;;
    main)
      /usr/bin/time -v nice -n 10 unikd federate "${R[@]}" --set out="$OUT/main" ;;
  esac
done
