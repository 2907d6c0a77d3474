{{/* Chart name. */}}
{{- define "tidal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-tidal, or <release> when it already contains the chart name. */}}
{{- define "tidal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tidal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "tidal.labels" -}}
helm.sh/chart: {{ include "tidal.chart" . }}
{{ include "tidal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tidal
{{- end -}}

{{/* Selector labels of the operator pods. */}}
{{- define "tidal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tidal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tidal.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tidal.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Settings the schema cannot express across keys. */}}
{{- define "tidal.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.peering.enabled) -}}
{{- fail "replicaCount > 1 needs operator.peering.enabled=true: two standalone operators would reconcile the same LLMDeployments" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (ne (toString .Values.operator.peering.priority) "auto") -}}
{{- fail "operator.peering.priority must be \"auto\" when replicaCount > 1: kopf pauses every operator that shares the top priority" -}}
{{- end -}}
{{- if eq (int .Values.operator.healthPort) (int .Values.operator.metricsPort) -}}
{{- fail "operator.healthPort and operator.metricsPort must differ" -}}
{{- end -}}
{{- end -}}

{{/* `tidal run` arguments (the priority is appended by the container command when it is "auto"). */}}
{{- define "tidal.runArgs" -}}
- run
{{- if .Values.operator.peering.enabled }}
- --peering={{ .Values.operator.peering.name }}
{{- if ne (toString .Values.operator.peering.priority) "auto" }}
- --priority={{ .Values.operator.peering.priority }}
{{- end }}
{{- else }}
- --standalone
{{- end }}
{{- range .Values.operator.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.operator.healthPort }}/healthz
- --metrics-port={{ .Values.operator.metricsPort }}
{{- range .Values.operator.prometheus.allow }}
- --prometheus-allow={{ . }}
{{- end }}
{{- if .Values.operator.prometheus.caBundle.configMap }}
- --prometheus-ca-bundle=/etc/tidal/prometheus-ca/{{ .Values.operator.prometheus.caBundle.key }}
{{- end }}
{{- with include "tidal.gpuCatalogName" . }}
- --gpu-catalog-configmap={{ . }}
{{- end }}
{{- if .Values.operator.verbose }}
- --verbose
{{- end }}
{{- range .Values.operator.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}


{{/* The GPU catalogue ConfigMap the operator reads: an existing one, the chart's own, or none (empty). */}}
{{- define "tidal.gpuCatalogName" -}}
{{- if .Values.gpuCatalog.existingConfigMap -}}
{{- .Values.gpuCatalog.existingConfigMap -}}
{{- else if .Values.gpuCatalog.gpus -}}
{{- include "tidal.fullname" . }}-gpu-catalog
{{- end -}}
{{- end -}}
