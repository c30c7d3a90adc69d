{{/* The name of the operator's objects: the release name when it contains "wasmop", else
"<release>-wasmop". Rendered as release "wasmop" this gives the names the docs use. */}}
{{- define "wasmop.fullname" -}}
{{- if contains "wasmop" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-wasmop" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wasmop.selectorLabels" -}}
app.kubernetes.io/name: wasmop
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wasmop.labels" -}}
{{ include "wasmop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
