{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "blend-scaler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name. */}}
{{- define "blend-scaler.fullname" -}}
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

{{- define "blend-scaler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blend-scaler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "blend-scaler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "blend-scaler.labels" -}}
helm.sh/chart: {{ include "blend-scaler.chart" . }}
{{ include "blend-scaler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: external-scaler
app.kubernetes.io/part-of: keda
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod template labels: only what stays the same across chart revisions.
helm.sh/chart and app.kubernetes.io/version change with every Flux
`reconcileStrategy: Revision` build (0.1.0+<git sha>), and a changed pod
template rolls every pod: on each Git commit, caches cold. */}}
{{- define "blend-scaler.podLabels" -}}
{{ include "blend-scaler.selectorLabels" . }}
app.kubernetes.io/component: external-scaler
app.kubernetes.io/part-of: keda
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "blend-scaler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "blend-scaler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "blend-scaler.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* In-cluster DNS name KEDA dials (scalerAddress without the port). */}}
{{- define "blend-scaler.host" -}}
{{- printf "%s.%s.svc.cluster.local" (include "blend-scaler.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "blend-scaler.scalerAddress" -}}
{{- printf "%s:%d" (include "blend-scaler.host" .) (int .Values.scaler.grpcPort) }}
{{- end }}

{{/* Probe mode after resolving auto. */}}
{{- define "blend-scaler.probeMode" -}}
{{- if eq .Values.probes.mode "auto" }}
{{- if .Values.tls.enabled }}http{{ else }}grpc{{ end }}
{{- else }}
{{- .Values.probes.mode }}
{{- end }}
{{- end }}

{{- define "blend-scaler.credentialsSecretName" -}}
{{- if eq .Values.credentials.source "keyVault" }}
{{- default (printf "%s-credentials" (include "blend-scaler.fullname" .)) .Values.credentials.keyVault.syncedSecretName }}
{{- else }}
{{- .Values.credentials.secret.name }}
{{- end }}
{{- end }}

{{/* Fail rendering early on combinations the schema cannot express. */}}
{{- define "blend-scaler.validate" -}}
{{- if and .Values.tls.enabled (eq .Values.tls.source "secret") (not .Values.tls.secret.name) }}
{{- fail "tls.source=secret needs tls.secret.name" }}
{{- end }}
{{- if and .Values.tls.enabled (eq .Values.tls.source "certManagerCsi") (not .Values.tls.certManagerCsi.issuerName) }}
{{- fail "tls.source=certManagerCsi needs tls.certManagerCsi.issuerName" }}
{{- end }}
{{- if and .Values.tls.clientAuth.enabled (not .Values.tls.enabled) }}
{{- fail "tls.clientAuth.enabled (mTLS) needs tls.enabled" }}
{{- end }}
{{- if and .Values.metrics.tls.enabled (not .Values.tls.enabled) }}
{{- fail "metrics.tls.enabled serves the HTTP port with the gRPC certificate: it needs tls.enabled" }}
{{- end }}
{{- if and .Values.metrics.tls.enabled (or .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled) (eq .Values.tls.source "certManagerCsi") (not .Values.metrics.tls.scrapeCA) (not .Values.metrics.tls.scrapeInsecureSkipVerify) }}
{{- fail "metrics.tls.enabled with tls.source=certManagerCsi: no Secret holds the CA, so the ServiceMonitor/PodMonitor needs metrics.tls.scrapeCA (or metrics.tls.scrapeInsecureSkipVerify)" }}
{{- end }}
{{- if and (eq .Values.probes.mode "grpc") .Values.tls.enabled }}
{{- fail "probes.mode=grpc cannot probe a TLS gRPC port (the kubelet's gRPC probe is plaintext); use auto or http" }}
{{- end }}
{{- if and (ne .Values.credentials.source "none") (not .Values.credentials.items) }}
{{- fail "credentials.source is set but credentials.items is empty" }}
{{- end }}
{{- if and (eq .Values.credentials.source "secret") (not .Values.credentials.secret.name) }}
{{- fail "credentials.source=secret needs credentials.secret.name" }}
{{- end }}
{{- if eq .Values.credentials.source "keyVault" }}
{{- if not .Values.credentials.keyVault.name }}
{{- fail "credentials.source=keyVault needs credentials.keyVault.name" }}
{{- end }}
{{- if not .Values.credentials.keyVault.tenantId }}
{{- fail "credentials.source=keyVault needs credentials.keyVault.tenantId" }}
{{- end }}
{{- if not (or .Values.credentials.keyVault.clientId .Values.workloadIdentity.clientId) }}
{{- fail "credentials.source=keyVault needs credentials.keyVault.clientId or workloadIdentity.clientId" }}
{{- end }}
{{- range .Values.credentials.items }}
{{- if not .keyVaultSecret }}
{{- fail (printf "credentials.items[%s].keyVaultSecret is required with credentials.source=keyVault" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (gt (int .Values.replicaCount) 1) (eq (toString $pdb.maxUnavailable) "") }}
{{- $min := toString $pdb.minAvailable }}
{{- if hasSuffix "%" $min }}
{{- if ge (int (trimSuffix "%" $min)) 100 }}
{{- fail (printf "podDisruptionBudget.minAvailable=%s would block every node drain; use less than 100%% or set podDisruptionBudget.maxUnavailable" $min) }}
{{- end }}
{{- else if ge (int $min) (int .Values.replicaCount) }}
{{- fail (printf "podDisruptionBudget.minAvailable=%s is not below replicaCount=%d, so no node could be drained; lower it or set podDisruptionBudget.maxUnavailable" $min (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
{{- if and $pdb.enabled (ne (toString $pdb.maxUnavailable) "") (or (eq (toString $pdb.maxUnavailable) "0") (eq (toString $pdb.maxUnavailable) "0%")) }}
{{- fail "podDisruptionBudget.maxUnavailable=0 would block every node drain" }}
{{- end }}
{{- $em := .Values.externalMetrics }}
{{- if and $em.registerAPIService (not $em.enabled) }}
{{- fail "externalMetrics.registerAPIService needs externalMetrics.enabled (the APIService would point at a Service that does not exist)" }}
{{- end }}
{{- if and $em.certManager.enabled (not $em.enabled) }}
{{- fail "externalMetrics.certManager.enabled needs externalMetrics.enabled" }}
{{- end }}
{{- if and $em.enabled $em.certManager.enabled (not $em.certManager.issuerRef.name) }}
{{- fail "externalMetrics.certManager.enabled needs externalMetrics.certManager.issuerRef.name" }}
{{- end }}
{{- if and $em.enabled (has (int $em.port) (list (int .Values.scaler.grpcPort) (int .Values.scaler.httpPort))) }}
{{- fail (printf "externalMetrics.port=%d is already scaler.grpcPort or scaler.httpPort" (int $em.port)) }}
{{- end }}
{{- if and $em.networkPolicy.from (not $em.enabled) }}
{{- fail "externalMetrics.networkPolicy.from is set but externalMetrics.enabled is false" }}
{{- end }}
{{- if and .Values.workloadIdentity.enabled (not .Values.workloadIdentity.clientId) }}
{{- fail "workloadIdentity.enabled needs workloadIdentity.clientId (or set workloadIdentity.enabled=false)" }}
{{- end }}
{{- end }}

{{- define "blend-scaler.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/* One scrape endpoint of /metrics, shared by the ServiceMonitor and the
PodMonitor; `.monitor` is metrics.serviceMonitor or metrics.podMonitor, `.root`
the chart's context. Empty
interval/scrapeTimeout fall back to Prometheus' global settings. */}}
{{- define "blend-scaler.scrapeEndpoint" -}}
{{- $root := .root }}
{{- $mtls := $root.Values.metrics.tls }}
{{- with .monitor -}}
- port: http-metrics
  path: /metrics
  {{- if $mtls.enabled }}
  scheme: https
  tlsConfig:
    serverName: {{ default (printf "%s.%s.svc" (include "blend-scaler.fullname" $root) $root.Release.Namespace) $mtls.scrapeServerName }}
    {{- if $mtls.scrapeInsecureSkipVerify }}
    insecureSkipVerify: true
    {{- else if $mtls.scrapeCA }}
    ca:
      {{- toYaml $mtls.scrapeCA | nindent 6 }}
    {{- else }}
    ca:
      secret:
        name: {{ $root.Values.tls.secret.name }}
        key: ca.crt
    {{- end }}
  {{- else }}
  scheme: http
  {{- end }}
  {{- with .interval }}
  interval: {{ . }}
  {{- end }}
  {{- with .scrapeTimeout }}
  scrapeTimeout: {{ . }}
  {{- end }}
  {{- with .relabelings }}
  relabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The adapter's Service: the APIService points at it, and its DNS names are
the serving certificate's SANs (the aggregator dials <svc>.<ns>.svc). */}}
{{- define "blend-scaler.adapterService" -}}
{{- printf "%s-adapter" (include "blend-scaler.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blend-scaler.adapterTlsSecret" -}}
{{- printf "%s-tls" (include "blend-scaler.adapterService" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blend-scaler.adapterDnsNames" -}}
{{- $svc := include "blend-scaler.adapterService" . }}
{{- list (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) | toJson }}
{{- end }}
