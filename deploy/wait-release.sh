#!/bin/sh
# Waits until the release just applied to namespace mercato runs, or fails.
# With the rollout controller (deploy/components/rollout) a release goes
# through its Rollouts: each must have judged the canary's current template
# (status.canaryGeneration = the canary Deployment's generation) and be Idle
# or Succeeded; Failed (rolled back) fails. Without it, the Deployments'
# own rolling updates.
#   deploy/wait-release.sh [timeout seconds, default 3600]
set -eu
ns=mercato
timeout=${1:-3600}
if ! kubectl -n "$ns" get rollouts.mercato.dev -o name 2>/dev/null | grep -q .; then
  for s in user order payment; do
    kubectl -n "$ns" rollout status "deployment/$s-service" --timeout=5m
  done
  exit 0
fi
deadline=$(($(date +%s) + timeout))
while :; do
  pending=0
  for rollout in $(kubectl -n "$ns" get rollouts.mercato.dev -o jsonpath='{.items[*].metadata.name}'); do
    fields=$(kubectl -n "$ns" get "rollouts.mercato.dev/$rollout" \
      -o jsonpath='{.spec.canaryDeployment} {.status.phase} {.status.canaryGeneration}')
    set -- $fields
    canary=$1 phase=${2:-} seen=${3:-}
    generation=$(kubectl -n "$ns" get "deployment/$canary" -o jsonpath='{.metadata.generation}')
    if [ "$phase" = Failed ] && [ "$seen" = "$generation" ]; then
      echo "$rollout: rolled back ($(kubectl -n "$ns" get "rollouts.mercato.dev/$rollout" -o jsonpath='{.status.message}'))" >&2
      exit 1
    fi
    if [ "$seen" != "$generation" ] || { [ "$phase" != Idle ] && [ "$phase" != Succeeded ]; }; then
      echo "$rollout: $phase (canary generation $generation, judged ${seen:-none})"
      pending=1
    fi
  done
  [ "$pending" = 0 ] && { echo "every Rollout is Idle or Succeeded"; exit 0; }
  [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out after $timeout s" >&2; exit 1; }
  sleep 10
done
