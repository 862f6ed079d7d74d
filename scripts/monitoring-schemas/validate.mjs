// Reads a JSON array of Kubernetes objects on stdin and validates each Prometheus Operator
// kind against the schema generated from prometheus-operator's Go types. Exit 1 on any error.
import { PodMonitor, PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = { PodMonitor, PrometheusRule, ServiceMonitor };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const obj of JSON.parse(input)) {
  const Model = models[obj.kind];
  const what = `${obj.kind}/${obj.metadata?.name}`;
  if (!Model || obj.apiVersion !== "monitoring.coreos.com/v1") {
    console.log(`FAIL: ${what}: not a monitoring.coreos.com/v1 kind this script knows`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`   ${what} valid`);
  } catch (e) {
    console.log(`FAIL: ${what}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
