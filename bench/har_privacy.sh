#!/usr/bin/env bash
# MF1 against epsilon on real HAR (issue 13). Every run uses a teacher trained on the labelled
# source alone (fed.teacher_placement=source-only), so the DP ledger covers everything that
# touches a target window, and the configs/har-fixes.yaml recipe (the default recipe's
# issue-13 measurement; since issue 25 the recipe's cross_kd=expected runs under DP too, its mean
# w inside the clipped vector: BENCHMARKS.md, "Record DP + secure aggregation with the recipe").
#   groups: the per-domain federations of configs/har-domain-groups.txt (5 edges, each a whole
#           target subject): off, record DP with per-node noise, record DP + secure aggregation
#           with noise shares, client-level (central) DP at K=5 (there: person-level).
#   k100:   client-level DP on the same groups with their 5 target subjects' windows pooled and
#           split IID over K = 5 and K = 100 clients ("HAR split by windows"; ~12 training and
#           ~5 test windows per client at K = 100).
# Extra arguments go to every bench call (e.g. --set distill.beta1=0.9).
# Usage: [SCENARIOS=G1;G2] bash bench/har_privacy.sh [OUT_DIR] [PART: groups|k100] [EPSILONS] [SEEDS]
#        [ARGS ...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/out/har-privacy}
PART=${2:-groups}
EPS=${3:-8 3 1}
SEEDS=${4:-0}
shift 4 || shift $#
GROUPS_LIST=${SCENARIOS:-$(tail -1 configs/har-domain-groups.txt)}  # SCENARIOS=...: a subset
B="unikd bench federated --config configs/har-fixes.yaml --data ../shared/data/HAR --dataset HAR
   --seeds $SEEDS --jobs 2 --quiet --set fed.teacher_placement=source-only"
if [ "$PART" = groups ]; then
  G="$B --scenarios $GROUPS_LIST --partition per-domain --out $OUT/groups"
  $G --label off "$@"
  for e in $EPS; do
    D="--set fed.dp_epsilon=$e"
    $G --set fed.dp=record $D --label "record-node-eps$e" "$@"
    $G --set fed.dp=record --set fed.secure_aggregation=true --set fed.record_noise=shares $D \
       --label "record-shares-eps$e" "$@"
    $G --set fed.dp=central $D --label "central-k5-eps$e" "$@"
  done
else
  for k in 5 100; do
    P="$B --scenarios $GROUPS_LIST --partition iid --clients $k --out $OUT/k100"
    $P --label "iid-k$k-off" "$@"
    for e in $EPS; do
      $P --set fed.dp=central --set fed.dp_epsilon=$e --label "central-k$k-eps$e" "$@"
    done
  done
fi
echo DONE
