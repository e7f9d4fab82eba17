{{- define "mft-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mft-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* What every object of the release carries, whatever its component. */ -}}
{{- define "mft-operator.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mftjob
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mft-operator.labels" -}}
{{ include "mft-operator.releaseLabels" . }}
{{ include "mft-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mft-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mft-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- /* Namespaced rules: only the verbs the operator uses. Each rule is exercised by the end-to-end suite. */ -}}
{{- define "mft-operator.namespacedRules" -}}
- apiGroups: [mft.dev]
  resources: [mftjobs]
  verbs: [get, list, watch]
- apiGroups: [mft.dev]
  resources: [mftjobs/status]
  verbs: [patch]
# Children block their MFTJob's deletion until they are gone (blockOwnerDeletion), which
# OwnerReferencesPermissionEnforcement admission allows only with update on its finalizers.
# The operator adds no finalizer.
- apiGroups: [mft.dev]
  resources: [mftjobs/finalizers]
  verbs: [update]
- apiGroups: [kubeflow.org]
  resources: [pytorchjobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, create]
# delete: the pods a restart of one replica leaves behind (they restart together).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, delete]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# create: the operator's own events; list and watch: the training operator's Warning events
# about PyTorchJobs, for pods it cannot create (quota, Pod Security).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list, watch]
{{- end -}}
{{- /* kopf discovers its resources through the CRD list, which is cluster-scoped either way. */ -}}
{{- define "mft-operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end -}}
