{{- define "observer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "observer.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "observer.labels" -}}
{{ include "observer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The agent's namespace: its own (namespace.create) or the release's. */}}
{{- define "observer.namespace" -}}
{{- if .Values.namespace.create -}}
{{- required "namespace.name: the namespace to create for the agent" .Values.namespace.name -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* agent.histogramBuckets as --histogram-buckets reads it: family=b1,b2;family=... */}}
{{- define "observer.histogramBuckets" -}}
{{- $families := list -}}
{{- range $family, $bounds := .Values.agent.histogramBuckets -}}
{{- $families = append $families (printf "%s=%s" $family (join "," $bounds)) -}}
{{- end -}}
{{- join ";" $families -}}
{{- end -}}
