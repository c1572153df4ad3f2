{{/*
Helpers of the Tramontane chart. Every helper is named tramontane.*.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "tramontane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters (a DNS label). The release name alone
when it already contains the chart name.
*/}}
{{- define "tramontane.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "tramontane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them after the first release. */}}
{{- define "tramontane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tramontane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "tramontane.labels" -}}
helm.sh/chart: {{ include "tramontane.chart" . }}
{{ include "tramontane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tramontane
{{- end }}

{{/* Name of the operator's ServiceAccount. */}}
{{- define "tramontane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tramontane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image: repository@digest when a digest is set, else repository:tag (appVersion). */}}
{{- define "tramontane.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Operator command: all namespaces by default, or one --namespace per watched namespace (Kopf
refuses --all-namespaces together with --namespace).
*/}}
{{- define "tramontane.command" -}}
- tramontane
- operator
- run
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace
- {{ . | quote }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Name of the metrics Service (also the ServiceMonitor's target). */}}
{{- define "tramontane.metricsServiceName" -}}
{{- printf "%s-metrics" (include "tramontane.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* The admission webhook's Service (the serving certificate names it). */}}
{{- define "tramontane.webhookServiceName" -}}
{{- printf "%s-webhook" (include "tramontane.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the webhook's certificate (self-managed or cert-manager's). */}}
{{- define "tramontane.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "tramontane.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ValidatingWebhookConfiguration (cluster-scoped: named after the release). */}}
{{- define "tramontane.webhookConfigurationName" -}}
{{- include "tramontane.fullname" . }}
{{- end }}

{{/* The DNS names the serving certificate carries (the operator checks the same four). */}}
{{- define "tramontane.webhookDnsNames" -}}
{{- $svc := include "tramontane.webhookServiceName" . -}}
- {{ $svc }}.{{ .Release.Namespace }}.svc
- {{ $svc }}.{{ .Release.Namespace }}.svc.cluster.local
- {{ $svc }}.{{ .Release.Namespace }}
- {{ $svc }}
{{- end }}

{{/* The router's objects: `<fullname>-router`. */}}
{{- define "tramontane.routerFullname" -}}
{{- printf "%s-router" (include "tramontane.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* Labels that select the router pods; never change them after the first release. */}}
{{- define "tramontane.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tramontane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end }}

{{/* Labels on every object of the router. */}}
{{- define "tramontane.routerLabels" -}}
helm.sh/chart: {{ include "tramontane.chart" . }}
{{ include "tramontane.routerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tramontane
{{- end }}

{{/* Name of the router's ServiceAccount. */}}
{{- define "tramontane.routerServiceAccountName" -}}
{{- if .Values.router.serviceAccount.create }}
{{- default (include "tramontane.routerFullname" .) .Values.router.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.router.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Router image: router.image.* where set, else the operator's image (the same CLI). */}}
{{- define "tramontane.routerImage" -}}
{{- $image := .Values.router.image }}
{{- $repository := default .Values.image.repository $image.repository }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else if and (not $image.repository) (not $image.tag) }}
{{- include "tramontane.image" . }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
Seconds the kubelet waits after SIGTERM: the preStop sleep, the router's drain grace (one
value: router.drainGraceSeconds feeds both this and --drain-grace-seconds), and 10 s for the
HTTP server's close (the router waits grace + 5 s for it) and the usage flush.
*/}}
{{- define "tramontane.routerTerminationGrace" -}}
{{- add (int .Values.router.preStopSleepSeconds) (int .Values.router.drainGraceSeconds) 10 }}
{{- end }}

{{/* The workers' default images: workers.image, else the worker image of this appVersion. */}}
{{- define "tramontane.workerImage" -}}
{{- default (printf "ghcr.io/tramontane/tramontane-worker:%s" .Chart.AppVersion) .Values.workers.image }}
{{- end }}
