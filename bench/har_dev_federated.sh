#!/usr/bin/env bash
# Federated (K=5 IID) recipes on the HAR development pairs (configs/har-dev-pairs.txt), sharing
# the cached DANN teacher ensembles of bench/har_dev_central.sh (same pair and seed).
# Chooses the federated default, the teacher placement (issue 15) and fed.local_steps (issue 12)
# without touching AdaTime's scenarios.
# Usage: bash bench/har_dev_federated.sh [OUT_DIR] [CENTRAL_DIR] [VARIANT ...]
set -euo pipefail
DEV=$(tail -1 configs/har-dev-pairs.txt)
OUT=${1:-bench/out/har-dev-federated}
TEACHERS=${2:-bench/out/har-dev-central}
shift 2 || true
B="unikd bench federated --data ../shared/data/HAR --dataset HAR --scenarios $DEV --seeds 0,1,2
   --clients 5 --partition iid --teachers $TEACHERS --out $OUT --jobs 2 --quiet"
REF="--config configs/har-central-best.yaml --set distill.cross_kd=expected"
run() {
  case $1 in
    ref-expected)       $B $REF --label fed-ref-expected ;;
    ref-expected-cloud) $B $REF --set fed.teacher_placement=cloud --label fed-ref-expected-cloud ;;
    ref-expected-cloud-proto) $B $REF --set fed.teacher_placement=cloud --set fed.cloud_hint=prototypes \
                          --label fed-ref-expected-cloud-proto ;;
    default)            $B --config configs/har-fixes.yaml --label fed-default ;;
    ref-expected-reest) $B $REF --set fed.bn_policy=reestimate --label fed-ref-expected-reest ;;
    local2|local5|local10) $B $REF --set fed.local_steps_mode=edge --set fed.local_steps=${1#local} --label fed-ref-expected-$1 ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}
for v in "${@:-ref-expected ref-expected-cloud default local5 local2 local10}"; do
  for w in $v; do run "$w"; done
done
echo DONE
