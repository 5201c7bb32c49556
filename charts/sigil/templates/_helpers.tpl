{{- define "sigil.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sigil.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "sigil.name" . -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object; app.kubernetes.io/instance finds a release's objects. */}}
{{- define "sigil.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sigil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sigil
{{- end -}}

{{- define "sigil.agentSelector" -}}
app.kubernetes.io/name: {{ include "sigil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "sigil.operatorSelector" -}}
app.kubernetes.io/name: {{ include "sigil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sigil.agentImage" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sigil.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sigil.agentServiceAccount" -}}
{{ .Values.serviceAccounts.agent.name }}
{{- end -}}

{{- define "sigil.operatorServiceAccount" -}}
{{ .Values.serviceAccounts.operator.name }}
{{- end -}}

{{/*
sigil.rules returns the rules of the object of the given kind in a
controller-gen RBAC file copied into files/rbac (see internal/charttest).
Call with (list $ "files/rbac/agent-role.yaml" "ClusterRole").
*/}}
{{- define "sigil.rules" -}}
{{- $root := index . 0 -}}
{{- $file := index . 1 -}}
{{- $kind := index . 2 -}}
{{- $found := false -}}
{{- range $doc := regexSplit "(?m)^---\\s*$" ($root.Files.Get $file) -1 -}}
{{- $o := fromYaml $doc -}}
{{- if and (not $found) (eq (get $o "kind") $kind) -}}
{{- $found = true -}}
{{- toYaml (get $o "rules") -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "no %s in %s" $kind $file) -}}
{{- end -}}
{{- end -}}

{{/* Environment overriding the in-cluster API server address (k8sServiceHost). */}}
{{- define "sigil.apiServerEnv" -}}
{{- if .Values.k8sServiceHost -}}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.k8sServiceHost | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.k8sServicePort | quote }}
{{- end -}}
{{- end -}}
