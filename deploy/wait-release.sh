#!/bin/sh
# Waits until the release just applied to namespace mercato runs, or fails.
# With the rollout controller (deploy/components/rollout) a release goes
# through its Rollouts: each must have judged its canary's current template
# (status.canaryGeneration = the canary Deployment's generation) and be Idle
# or Succeeded; one Failed (rolled back) on it fails the release, once every
# Rollout has been judged. Without the controller, the Deployments' own
# rolling updates. A kubectl call that fails is retried, not taken as an
# answer.
#   deploy/wait-release.sh [timeout seconds, default 3600]
set -eu
ns=mercato
timeout=${1:-3600}
deadline=$(($(date +%s) + timeout))

# kubectl, retried for a minute before giving up.
k() {
  tries=0
  until kubectl "$@"; do
    tries=$((tries + 1))
    [ "$tries" -lt 12 ] || return 1
    sleep 5
  done
}

if ! kubectl get crd rollouts.mercato.dev >/dev/null 2>&1 \
  || [ -z "$(k -n "$ns" get rollouts.mercato.dev -o name)" ]; then
  for s in user order payment; do
    k -n "$ns" rollout status "deployment/$s-service" --timeout=5m
  done
  exit 0
fi
while :; do
  pending=0
  failed=0
  for rollout in $(k -n "$ns" get rollouts.mercato.dev -o jsonpath='{.items[*].metadata.name}'); do
    canary=$(k -n "$ns" get "rollouts.mercato.dev/$rollout" -o jsonpath='{.spec.canaryDeployment}')
    phase=$(k -n "$ns" get "rollouts.mercato.dev/$rollout" -o jsonpath='{.status.phase}')
    seen=$(k -n "$ns" get "rollouts.mercato.dev/$rollout" -o jsonpath='{.status.canaryGeneration}')
    generation=$(k -n "$ns" get "deployment/$canary" -o jsonpath='{.metadata.generation}')
    if [ "$seen" != "$generation" ]; then
      echo "$rollout: not judged yet (canary generation $generation, judged ${seen:-none})"
      pending=1
    elif [ "$phase" = Failed ]; then
      echo "$rollout: rolled back: $(k -n "$ns" get "rollouts.mercato.dev/$rollout" -o jsonpath='{.status.message}')" >&2
      failed=1
    elif [ "$phase" != Idle ] && [ "$phase" != Succeeded ]; then
      echo "$rollout: $phase"
      pending=1
    fi
  done
  if [ "$pending" = 0 ]; then
    [ "$failed" = 0 ] || exit 1
    echo "every Rollout is Idle or Succeeded"
    exit 0
  fi
  [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out after $timeout s" >&2; exit 1; }
  sleep 10
done
