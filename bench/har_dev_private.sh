#!/usr/bin/env bash
# Record DP + secure aggregation with the recommended loss behaviour (issue 25, item 6): the HAR
# development pairs, K = 5 IID edges, the cached 3-member DANN teachers of a central bench
# (TEACHERS: a `unikd bench central --out` folder; read, never written), the recipe's
# reference_compat + cross_kd=expected (its mean w inside each window's clipped vector), against
# the same federation without DP. The private setting is BENCHMARKS.md's record-shares row (issue
# 13): fed.record_noise=shares, bn_policy=reestimate, per-network clipping, epsilon 8.
# Usage: bash bench/har_dev_private.sh OUT TEACHERS [EPSILON] [SCENARIOS] [ARGS ...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1
TEACHERS=$2
EPS=${3:-8}
PAIRS=${4:-$(tail -1 configs/har-dev-pairs.txt)}
shift 4 || shift $#
B="unikd bench federated --data ../shared/data/HAR --dataset HAR --scenarios $PAIRS --seeds 0
   --clients 5 --partition iid --teachers $TEACHERS --jobs 1 --quiet --out $OUT
   --set distill.reference_compat=true --set distill.cross_kd=expected
   --set fed.bn_policy=reestimate --set fed.dp_clip_scope=per-network"
$B --label off "$@"
$B --set fed.dp=record --set fed.secure_aggregation=true --set fed.record_noise=shares \
   --set fed.dp_epsilon="$EPS" --label "record-shares-eps$EPS" "$@"
echo DONE
