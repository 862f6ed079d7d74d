{{- define "stompgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stompgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stompgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "stompgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "stompgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stompgate.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stompgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stompgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stompgate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator needs on namespaced objects it manages. */}}
{{- define "stompgate.rules" -}}
- apiGroups: ["stompgate.io"]
  resources: ["stompgateways"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["stompgate.io"]
  resources: ["stompgateways/status"]
  verbs: ["get", "patch"]
- apiGroups: ["stompgate.io"]
  resources: ["stompgateways/finalizers"]
  verbs: ["update"]
# delete: never called on these, but the OwnerReferencesPermissionEnforcement admission
# plugin (on in OpenShift) allows setting an ownerReference only to who may delete the object.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.ingress, spec.networkPolicy: applied, watched, and removed when their field is.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses", "networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.autoscaling: the HorizontalPodAutoscaler, applied, watched, removed with its field.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.rabbitmq.clusterRef: the RabbitmqCluster's status (read each reconcile, not watched);
# its default-user Secret is read with the Secret rule below.
- apiGroups: ["rabbitmq.com"]
  resources: ["rabbitmqclusters"]
  verbs: ["get"]
# Whether spec.ingress.className exists (cluster-scoped: not granted by a Role, then unchecked).
- apiGroups: ["networking.k8s.io"]
  resources: ["ingressclasses"]
  verbs: ["get"]
# spec.route and spec.tls.issuerRef, when the cluster serves these kinds (not watched).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Before re-creating a missing child: is its namespace being deleted? (In a Role, this
# allows reading that namespace only.)
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
{{- end -}}
