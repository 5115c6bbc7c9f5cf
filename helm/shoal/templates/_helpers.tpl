{{- define "shoal.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "shoal.operator.name" -}}{{ .Release.Name }}-operator{{- end -}}
{{- define "shoal.router.name" -}}{{ .Release.Name }}-router{{- end -}}
{{- define "shoal.adminSecret.name" -}}
{{- .Values.triton.restrictedApi.existingSecret | default (printf "%s-triton-admin" .Release.Name) -}}
{{- end -}}

{{- define "shoal.operator.selector" -}}
app.kubernetes.io/name: shoal-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "shoal.router.selector" -}}
app.kubernetes.io/name: shoal-router
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shoal.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The namespaces whose pools the operator manages. */}}
{{- define "shoal.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}{{ join "," .Values.watchNamespaces }}{{ else }}{{ .Release.Namespace }}{{ end -}}
{{- end -}}

{{/* Pod and container security shared by the chart's pods (the operator's pool pods get the
same from src/shoal/operator/resources.py). */}}
{{- define "shoal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "shoal.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "shoal.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "shoal.router.namespace" -}}
{{- .Values.router.namespace | default .Release.Namespace -}}
{{- end -}}
