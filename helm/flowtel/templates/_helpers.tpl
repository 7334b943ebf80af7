{{/* Names and labels, as `helm create` makes them, plus a component label so the gateway's pods
never match the collector's selectors (and the other way round). */}}

{{- define "flowtel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flowtel.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "flowtel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Shared by every object of the release. */}}
{{- define "flowtel.commonLabels" -}}
helm.sh/chart: {{ include "flowtel.chart" . }}
app.kubernetes.io/name: {{ include "flowtel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flowtel
{{- end }}

{{- define "flowtel.labels" -}}
{{ include "flowtel.commonLabels" . }}
app.kubernetes.io/component: collector
{{- end }}

{{- define "flowtel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowtel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: collector
{{- end }}

{{- define "flowtel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowtel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flowtel.headlessName" -}}
{{- printf "%s-headless" (include "flowtel.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "flowtel.secretName" -}}
{{- default (include "flowtel.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* The Secret is needed when something reads it. */}}
{{- define "flowtel.needsSecret" -}}
{{- if or .Values.appInsights.enabled .Values.auth.enabled }}true{{ end }}
{{- end }}

{{- define "flowtel.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Gateway tier (upstream OpenTelemetry Collector contrib). */}}
{{- define "flowtel.gatewayName" -}}
{{- printf "%s-gateway" (include "flowtel.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "flowtel.gatewayLabels" -}}
{{ include "flowtel.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "flowtel.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "flowtel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "flowtel.gatewayImage" -}}
{{- if .Values.gateway.image.digest }}
{{- printf "%s@%s" .Values.gateway.image.repository .Values.gateway.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.gateway.image.repository .Values.gateway.image.tag }}
{{- end }}
{{- end }}

{{/* In-cluster DNS names: the gateway's loadbalancing exporter resolves the headless one to pod IPs. */}}
{{- define "flowtel.headlessHost" -}}
{{- printf "%s.%s.svc.cluster.local" (include "flowtel.headlessName" .) .Release.Namespace }}
{{- end }}

{{- define "flowtel.serviceHost" -}}
{{- printf "%s.%s.svc.cluster.local" (include "flowtel.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "flowtel.gatewayHost" -}}
{{- printf "%s.%s.svc.cluster.local" (include "flowtel.gatewayName" .) .Release.Namespace }}
{{- end }}
