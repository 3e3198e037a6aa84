#!/usr/bin/env bash
# Issue 4's benchmark on real UCI-HAR (5 clients). The distillation variants reuse the DANN
# teachers of the central benchmark (same scenario and seed), so each line compares with the
# central run of the same config; the last line pre-trains its teacher federatedly instead.
# The federation can only compute the intended target KD, so target_kd stays on here.
# Usage: bash bench/har_federated.sh [OUT]
set -euo pipefail
OUT=${1:-bench/out/har-federated}
TEACHERS=${TEACHERS:-bench/out/har-central}
MAIN5=2:11,7:13,12:16,9:18,6:23
F="unikd bench federated --config configs/har-fixes.yaml --data ../shared/data/HAR --dataset HAR --clients 5 --out $OUT --jobs 2 --set distill.target_kd=true --set distill.detach_weights=false"
$F --partition iid --seeds 0,1,2 --teachers "$TEACHERS" --label "fed-iid-K5"
$F --partition dirichlet:0.5 --seeds 0 --scenarios $MAIN5 --teachers "$TEACHERS" --label "fed-dirichlet0.5-K5"
$F --partition iid --seeds 0 --scenarios $MAIN5 --teachers "$TEACHERS" --label "fed-iid-K5-cloud-teacher" --set fed.teacher_placement=cloud
$F --partition iid --seeds 0 --scenarios $MAIN5 --label "fed-iid-K5-source-only-teacher" --set fed.teacher_placement=source-only
$F --partition iid --seeds 0 --scenarios $MAIN5 --teachers "$TEACHERS" --label "fed-iid-K5-local5" --set fed.local_steps_mode=edge --set fed.local_steps=5
$F --partition iid --seeds 0 --scenarios $MAIN5 --teachers "$TEACHERS" --label "fed-iid-K5-local20" --set fed.local_steps_mode=edge --set fed.local_steps=20
$F --partition iid --seeds 0 --scenarios $MAIN5 --label "fed-iid-K5-fedDANN-teacher-x1" --set teacher.ensemble=1
