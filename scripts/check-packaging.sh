#!/usr/bin/env bash
# Packaging checks with real tools from PyPI:
#   - `helm lint --strict` and `helm template` (Helm v4 library, helm-python-sdk) for several
#     value sets, then `kubernetes-validate --strict` on every rendered manifest;
#   - the Prometheus Operator objects (ServiceMonitor, PodMonitor, PrometheusRule) valid against
#     their schemas (npm @kubernetes-models/prometheus-operator, scripts/monitoring-schemas/);
#   - deploy/ (kubectl kustomize) and deploy/observability/ in sync with the chart and valid;
#   - `stompgate crd` equal to crds/, the chart's crds/ and deploy/crds/;
#   - `stompgate render` of every example valid; examples valid against the CRD schema
#     (jsonschema) and its CEL rules (`stompgate lint`).
# Usage: scripts/check-packaging.sh [--update]   (--update rewrites the generated files)
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATE=0
[[ "${1:-}" == "--update" ]] && UPDATE=1
K8S_VERSION="${K8S_VERSION:-1.33.0}"

# Tools: a venv under the gitignored .venv/, or the user site when venv is unavailable.
VENV=.venv/packaging
PY=python3
if [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" >/dev/null 2>&1; then
  PY="$VENV/bin/python"
fi
if ! "$PY" -c 'import helm_python, kubernetes_validate, jsonschema, yaml, lupa' >/dev/null 2>&1; then
  echo "== installing packaging tools"
  if [[ "$PY" == python3 ]]; then
    python3 -m pip install --quiet --user -r scripts/requirements-packaging.txt
  else
    "$PY" -m pip install --quiet -r scripts/requirements-packaging.txt
  fi
fi
KV=("$PY" -m kubernetes_validate --strict --quiet -k "$K8S_VERSION")

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The binary the test run already built (scripts/test.sh sets STOMPGATE_BIN): `cargo run`
# resolves features without the dev-dependencies and would rebuild much of the tree.
if [[ -n "${STOMPGATE_BIN:-}" && -x "${STOMPGATE_BIN}" ]]; then
  STOMPGATE=("$STOMPGATE_BIN")
else
  STOMPGATE=(cargo run -q --)
fi

echo "== stompgate crd"
"${STOMPGATE[@]}" crd > "$WORK/crd.yaml"
for f in crds/stompgate.io_stompgateways.yaml charts/stompgate/crds/stompgate.io_stompgateways.yaml deploy/crds/stompgate.io_stompgateways.yaml; do
  if [[ $UPDATE == 1 ]]; then mkdir -p "$(dirname "$f")"; cp "$WORK/crd.yaml" "$f"; fi
  diff -q "$WORK/crd.yaml" "$f" >/dev/null || { echo "FAIL: $f differs from 'stompgate crd' (run $0 --update)"; exit 1; }
done
"${KV[@]}" "$WORK/crd.yaml"

echo "== helm lint and template"
UPDATE=$UPDATE "$PY" - "$WORK" <<'PY'
import os, sys, json, yaml
import helm_python as helm

work = sys.argv[1]
chart_dir = "charts/stompgate"
variants = {
    "default": {},
    "namespaced-ha": {"watchNamespace": "apps", "replicaCount": 2,
                      "metrics": {"serviceMonitor": {"enabled": True},
                                  "gatewayPodMonitor": {"enabled": True}},
                      "image": {"digest": "sha256:" + "a" * 64}},
    "observability": {"metrics": {"serviceMonitor": {"enabled": True},
                                  "gatewayPodMonitor": {"enabled": True},
                                  "prometheusRule": {"enabled": True},
                                  "grafanaDashboard": {"enabled": True}}},
    "no-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}},
}
# Prometheus Operator kinds: CRDs, not in the Kubernetes schemas; validated by validate.mjs.
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
monitoring = []
observability = []
failed = False
for name, values in variants.items():
    report = helm.lint(chart_dir, values, strict=True, namespace="stompgate-system")
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    if bad:
        print(f"FAIL: helm lint ({name}): {bad}")
        failed = True
    chart = helm.Chart.load(chart_dir)
    chart.validate_schema(values)
    rendered = chart.render(values, name="stompgate", namespace="stompgate-system", is_install=True)
    out = os.path.join(work, f"helm-{name}.yaml")
    with open(out, "w") as f:
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt") or not text.strip():
                continue
            for doc in yaml.safe_load_all(text):
                if not doc:
                    continue
                if name == "observability" and (doc["kind"] in MONITORING_KINDS or
                                                doc["metadata"]["name"].endswith("-dashboard")):
                    observability.append((os.path.basename(path), doc))
                if doc["kind"] in MONITORING_KINDS:
                    monitoring.append(doc)
                else:
                    f.write("---\n" + yaml.safe_dump(doc, sort_keys=False))
    print(f"   {name}: lint ok, rendered {out}")
# A value outside values.schema.json must be refused.
try:
    helm.Chart.load(chart_dir).validate_schema({"replicaCount": "two"})
    print("FAIL: values.schema.json accepted replicaCount: two"); failed = True
except helm.HelmError:
    pass

with open(os.path.join(work, "monitoring.json"), "w") as f:
    json.dump(monitoring, f)

GENERATED = "# Generated from charts/stompgate by scripts/check-packaging.sh --update; do not edit.\n"

def without_helm_labels(text):
    lines = [l.replace("app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kubectl")
             for l in text.splitlines() if "helm.sh/chart:" not in l]
    return "\n".join(lines) + "\n"

def in_sync(target, content):
    """deploy/ files are renders of the chart: rewritten by --update, else compared."""
    global failed
    if os.environ.get("UPDATE") == "1":
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").write(content)
    if not os.path.exists(target) or open(target).read() != content:
        print(f"FAIL: {target} is out of sync with the chart (run scripts/check-packaging.sh --update)")
        failed = True

# deploy/operator.yaml is the default render without Helm's own labels.
in_sync("deploy/operator.yaml", GENERATED + without_helm_labels(open(os.path.join(work, "helm-default.yaml")).read()))

# deploy/observability/: the monitors, the rules and the dashboard ConfigMap as plain YAML, and
# the dashboard JSON as the chart's ConfigMap carries it (for a Grafana without the sidecar).
class BlockDumper(yaml.SafeDumper):
    pass
BlockDumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))
names = []
for template, doc in observability:
    target = "deploy/observability/" + template
    names.append(template)
    in_sync(target, GENERATED + without_helm_labels(
        yaml.dump(doc, Dumper=BlockDumper, sort_keys=False, width=4096)))
    if doc["kind"] == "ConfigMap":
        in_sync("deploy/observability/stompgate-dashboard.json", doc["data"]["stompgate.json"] + "\n")
kustomization = GENERATED + yaml.safe_dump(
    {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
     "resources": sorted(names)}, sort_keys=False)
in_sync("deploy/observability/kustomization.yaml", kustomization)
sys.exit(1 if failed else 0)
PY
for f in "$WORK"/helm-*.yaml; do "${KV[@]}" "$f"; done

echo "== Prometheus Operator objects (schemas from @kubernetes-models/prometheus-operator)"
MS=scripts/monitoring-schemas
want=$(cat "$MS/package.json" "$MS/package-lock.json" | sha256sum | cut -d' ' -f1)
if [[ "$(cat "$MS/node_modules/.stompgate-deps.sha256" 2>/dev/null)" != "$want" ]]; then
  (cd "$MS" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$MS/node_modules/.stompgate-deps.sha256"
fi
node "$MS/validate.mjs" < "$WORK/monitoring.json"
# Least privilege and Pod Security `restricted` over every render (tests/operator/packaging.rs).
mkdir -p "$WORK/rendered" && cp "$WORK"/helm-*.yaml "$WORK/rendered/"
STOMPGATE_RENDERED_DIR="$WORK/rendered" cargo test -q --test operator packaging::

echo "== deploy/ (kubectl kustomize)"
if command -v kubectl >/dev/null; then
  kubectl kustomize deploy > "$WORK/deploy.yaml"
else
  # Without kubectl, validate the files the kustomization lists.
  cat deploy/namespace.yaml deploy/crds/stompgate.io_stompgateways.yaml deploy/operator.yaml > "$WORK/deploy.yaml"
fi
"${KV[@]}" "$WORK/deploy.yaml"
if command -v kubectl >/dev/null; then
  kubectl kustomize deploy/observability > /dev/null
fi

echo "== examples: lint, CRD schema, render"
EXAMPLES=(examples/stompgateway.yaml examples/stompgateway-full.yaml examples/stompgateway-public.yaml)
"${STOMPGATE[@]}" lint "${EXAMPLES[@]/#/-f}"
"$PY" - "$WORK/crd.yaml" "${EXAMPLES[@]}" <<'PY'
import sys, yaml, jsonschema

crd = yaml.safe_load(open(sys.argv[1]))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

def to_jsonschema(s):
    """OpenAPI v3 (Kubernetes flavour) to JSON Schema: nullable, int-or-string, extensions."""
    if not isinstance(s, dict):
        return s
    out = {}
    for k, v in s.items():
        if k.startswith("x-kubernetes-"):
            continue
        if k == "properties":
            out[k] = {p: to_jsonschema(x) for p, x in v.items()}
        elif k in ("items", "additionalProperties"):
            out[k] = to_jsonschema(v)
        elif k != "nullable":
            out[k] = v
    if s.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if s.get("type") == "object" and "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out

js = to_jsonschema(schema)
for k in ("apiVersion", "kind"):
    js["properties"][k] = {"type": "string"}
js["properties"]["metadata"] = {"type": "object"}
n = 0
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "StompGateway":
            jsonschema.validate(doc, js)
            n += 1
if n == 0:
    sys.exit("FAIL: no StompGateway in the examples")
print(f"   {n} example StompGateway(s) valid against the CRD schema")
PY
"${STOMPGATE[@]}" render "${EXAMPLES[@]/#/-f}" > "$WORK/render-all.yaml"
# HTTPRoute and cert-manager Certificate are CRDs, not in the Kubernetes schemas: checked for
# presence here (their shape: tests/operator_resources.rs), the rest validated.
"$PY" - "$WORK/render-all.yaml" "$WORK/render.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"] for d in docs}
for k in ("Deployment", "Ingress", "NetworkPolicy", "HTTPRoute", "Certificate"):
    if k not in kinds:
        sys.exit(f"FAIL: render produced no {k}")
with open(sys.argv[2], "w") as f:
    yaml.safe_dump_all([d for d in docs if d["kind"] not in ("HTTPRoute", "Certificate")], f)
PY
"${KV[@]}" "$WORK/render.yaml"

echo "== docs/argocd-health.lua (Lua via lupa)"
"$PY" - <<'PY'
import sys
from lupa import LuaRuntime

script = open("docs/argocd-health.lua").read()
lua = LuaRuntime(unpack_returned_tuples=True)
check = lua.eval("function(obj) " + script + " end")

def obj(gen, observed, conds):
    o = {"metadata": {"generation": gen}}
    if observed is not None:
        o["status"] = {"observedGeneration": observed, "conditions": lua.table_from([
            lua.table_from({"type": t, "status": s, "reason": r, "message": "m", "observedGeneration": g})
            for (t, s, r, g) in conds])}
    return lua.table_from({k: (lua.table_from(v) if isinstance(v, dict) and k == "metadata" else
                               (lua.table_from(v) if isinstance(v, dict) else v)) for k, v in o.items()})

ready = [("Ready", "True", "Reconciled", 2), ("Reconciling", "False", "Reconciled", 2), ("Stalled", "False", "Reconciled", 2)]
cases = [
    ("no status", obj(1, None, []), "Progressing"),
    ("healthy", obj(2, 2, ready), "Healthy"),
    ("old generation", obj(3, 2, ready), "Progressing"),
    ("stalled", obj(2, 2, [("Ready", "False", "ExchangeConflict", 2), ("Stalled", "True", "ExchangeConflict", 2)]), "Degraded"),
    ("rolling out", obj(2, 2, [("Ready", "False", "RolloutInProgress", 2), ("Reconciling", "True", "RolloutInProgress", 2)]), "Progressing"),
    ("paused", obj(2, 2, [("Paused", "True", "Paused", 2)]), "Suspended"),
]
bad = 0
for name, o, want in cases:
    got = check(o)["status"]
    if got != want:
        print(f"FAIL: argocd-health.lua {name}: {got} != {want}"); bad += 1
sys.exit(1 if bad else 0)
PY

echo "== packaging checks passed"
