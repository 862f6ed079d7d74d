#!/usr/bin/env bash
# The end-to-end scenario of tests/e2e_operator.rs against a real cluster (kind or k3d), where
# one can run: real kubelet, real Deployment controller and garbage collector, the real image.
# Not run in CI (no container engine there); see docs/api-emulator.md.
#
#   scripts/e2e-cluster.sh kind        # creates kind cluster stompgate-e2e (deleted at the end)
#   scripts/e2e-cluster.sh k3d         # same with k3d
#   scripts/e2e-cluster.sh current     # uses the current kubectl context as it is
#
# Needs: docker, kubectl, kind or k3d, node + Chromium for the browser step
# (scripts/ensure-test-deps.sh). KEEP=1 keeps the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-kind}
CLUSTER=stompgate-e2e
IMAGE=stompgate/stompgate:e2e
say() { echo "== [$(date +%T)] $*"; }
fail() { echo "e2e-cluster: FAILED: $*" >&2; exit 1; }
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ "${KEEP:-0}" != 1 ]]; then
    case "$MODE" in
      kind) kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true ;;
      k3d) k3d cluster delete "$CLUSTER" >/dev/null 2>&1 || true ;;
    esac
  fi
}
trap cleanup EXIT
cond() { # cond NAME TYPE -> status
  kubectl get stompgw "$1" -o "jsonpath={.status.conditions[?(@.type==\"$2\")].status}"
}
wait_cond() { # wait_cond NAME TYPE STATUS SECONDS
  for _ in $(seq "$4"); do [[ "$(cond "$1" "$2")" == "$3" ]] && return 0; sleep 1; done
  kubectl get stompgw "$1" -o yaml >&2; fail "$1: $2 never became $3"
}

say "cluster ($MODE) and image"
docker build -t "$IMAGE" .
case "$MODE" in
  kind) kind create cluster --name "$CLUSTER" --wait 120s; kind load docker-image "$IMAGE" --name "$CLUSTER" ;;
  k3d) k3d cluster create "$CLUSTER" --wait; k3d image import "$IMAGE" -c "$CLUSTER" ;;
  current) echo "using context $(kubectl config current-context); the image must be pullable as $IMAGE" ;;
  *) fail "mode must be kind, k3d or current" ;;
esac

say "RabbitMQ in namespace messaging"
kubectl create namespace messaging --dry-run=client -o yaml | kubectl apply -f -
kubectl -n messaging apply -f - <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: rabbitmq}
spec:
  selector: {matchLabels: {app: rabbitmq}}
  template:
    metadata: {labels: {app: rabbitmq}}
    spec:
      containers:
      - name: rabbitmq
        image: rabbitmq:3.10-management
        ports: [{containerPort: 5672, name: amqp}]
        readinessProbe: {exec: {command: [rabbitmq-diagnostics, -q, check_port_connectivity]}, periodSeconds: 5}
---
apiVersion: v1
kind: Service
metadata: {name: rabbitmq}
spec:
  selector: {app: rabbitmq}
  ports: [{port: 5672, name: amqp}]
EOF
kubectl -n messaging rollout status deployment/rabbitmq --timeout=180s
audit_queue() { # the example binds rabbitmq -> queue audit; the queue is the application's
  kubectl -n messaging exec deploy/rabbitmq -- rabbitmqadmin declare queue name=audit durable=true
}
audit_queue

say "kubectl apply -f crds/ and the operator (deploy/)"
kubectl apply -f crds/
kubectl apply --server-side -k deploy/
kubectl -n stompgate-system set image deployment/stompgate operator="$IMAGE"
kubectl -n stompgate-system set env deployment/stompgate STOMPGATE_GATEWAY_IMAGE="$IMAGE"
kubectl -n stompgate-system rollout status deployment/stompgate --timeout=120s

say "kubectl apply -f examples/stompgateway-local.yaml (broker: rabbitmq.messaging.svc)"
sed 's/host: 127.0.0.1/host: rabbitmq.messaging.svc/' examples/stompgateway-local.yaml | kubectl apply -f -
kubectl wait stompgw/chat --for=condition=BrokerConnected --timeout=120s
kubectl wait stompgw/chat --for=condition=Ready --timeout=180s
kubectl get stompgw
for kind in configmap/chat-config service/chat deployment/chat poddisruptionbudget/chat; do
  owner=$(kubectl get "$kind" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')
  [[ "$owner" == "StompGateway/chat" ]] || fail "$kind is owned by '$owner'"
done

say "headless Chromium: the seed page through the gateway Service"
kubectl port-forward svc/chat 15674:15674 >/dev/null & PIDS+=($!)
kubectl -n messaging port-forward svc/rabbitmq 5672:5672 >/dev/null & PIDS+=($!)
sleep 3
node tests/browser/run.mjs seed --ws-override ws://127.0.0.1:15674/ws --amqp-url 'amqp://guest:guest@127.0.0.1:5672/%2f'

say "faults: Secret deleted, broker stopped"
kubectl delete secret rmq-creds
for _ in $(seq 60); do
  [[ "$(kubectl get stompgw chat -o 'jsonpath={.status.conditions[?(@.type=="Ready")].reason}')" == SecretNotFound ]] && break; sleep 1
done
[[ "$(kubectl get stompgw chat -o 'jsonpath={.status.conditions[?(@.type=="Ready")].reason}')" == SecretNotFound ]] || fail "no SecretNotFound"
sed 's/host: 127.0.0.1/host: rabbitmq.messaging.svc/' examples/stompgateway-local.yaml | kubectl apply -f -
wait_cond chat Ready True 120
kubectl -n messaging scale deployment/rabbitmq --replicas=0
kubectl patch stompgw chat --type=merge -p '{"spec":{"topology":{"resyncIntervalSeconds":20}}}'
wait_cond chat BrokerConnected False 120
kubectl -n messaging scale deployment/rabbitmq --replicas=1
kubectl -n messaging rollout status deployment/rabbitmq --timeout=180s
audit_queue   # a new pod without a volume: the queue is gone with the old one
wait_cond chat BrokerConnected True 240

say "kubectl patch (replicas 2, a new exchange and binding), operator restarted"
kubectl patch stompgw chat --type=merge -p '{"spec":{"replicas":2,"topology":{"exchanges":[{"name":"rabbitmq","type":"topic"},{"name":"e2e-cluster","type":"topic"}],"bindings":[{"source":"rabbitmq","destination":"audit","destinationType":"queue","routingKey":"zjj"},{"source":"rabbitmq","destination":"e2e-cluster","destinationType":"exchange","routingKey":"zjj"}]}}}'
kubectl -n stompgate-system delete pod -l app.kubernetes.io/name=stompgate-operator --wait=false
for _ in $(seq 180); do
  [[ "$(kubectl get stompgw chat -o jsonpath='{.status.readyReplicas}')" == 2 && "$(cond chat Ready)" == True ]] && break; sleep 1
done
[[ "$(kubectl get stompgw chat -o jsonpath='{.status.readyReplicas}')" == 2 ]] || fail "did not converge to 2 ready replicas"
kubectl get stompgw chat -o jsonpath='{.status.topology.exchanges}'; echo

say "kubectl delete: finalizer, garbage collection"
kubectl delete stompgw chat --timeout=120s
for kind in configmap/chat-config service/chat deployment/chat poddisruptionbudget/chat; do
  kubectl wait --for=delete "$kind" --timeout=120s 2>/dev/null || true
  ! kubectl get "$kind" >/dev/null 2>&1 || fail "$kind was not garbage-collected"
done
kubectl get events --field-selector reason=CleanedUp
say "PASSED"
