{{/* Names and labels shared by every object of the chart. */}}

{{- define "xpander-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's object name: <release>-xpander-bridge, or the release name alone when it already says it. */}}
{{- define "xpander-bridge.fullname" -}}
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

{{- define "xpander-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "xpander-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xpander-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "xpander-bridge.labels" -}}
helm.sh/chart: {{ include "xpander-bridge.chart" . }}
{{ include "xpander-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: xpander-bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "xpander-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "xpander-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "xpander-bridge.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret holding the API key and the SASL password: the user's, or the chart's. */}}
{{- define "xpander-bridge.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "xpander-bridge.fullname" .) }}
{{- end }}

{{/* True (non-empty) when a Secret is there to read the API key from. */}}
{{- define "xpander-bridge.hasApiKey" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.apiKey }}true{{- end }}
{{- end }}

{{/* True (non-empty) when Kafka is reached over SASL, so a password is needed. */}}
{{- define "xpander-bridge.kafkaSasl" -}}
{{- if hasPrefix "SASL" (dig "kafka" "security_protocol" "PLAINTEXT" .Values.config) }}true{{- end }}
{{- end }}

{{/* The port the bridge serves /metrics, /livez and /readyz on: config.http.port. */}}
{{- define "xpander-bridge.httpPort" -}}
{{- dig "http" "port" 8080 .Values.config | int }}
{{- end }}

{{/* Where the ConfigMap's config.yaml is mounted. */}}
{{- define "xpander-bridge.configDir" -}}/etc/xpander-bridge{{- end }}

{{/*
The pod's grace period: within pipeline.shutdown_timeout_s after SIGTERM the
bridge stops its streams, writes their final checkpoints, drains and flushes;
then it leaves the consumer group. The kubelet must wait longer than that
before SIGKILL: the timeout plus shutdownGraceMarginSeconds.
*/}}
{{- define "xpander-bridge.terminationGracePeriodSeconds" -}}
{{- $drain := dig "pipeline" "shutdown_timeout_s" 25 .Values.config | float64 }}
{{- $grace := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $grace }}
{{- $grace = add (ceil $drain | int) .Values.shutdownGraceMarginSeconds }}
{{- else if le ($grace | float64) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be above config.pipeline.shutdown_timeout_s (%v): the bridge needs that long to drain on SIGTERM" $grace $drain) }}
{{- end }}
{{- $grace | int }}
{{- end }}

{{/* Checks that stop a broken release before it reaches the cluster. */}}
{{- define "xpander-bridge.validate" -}}
{{- if not (dig "http" "enabled" true .Values.config) }}
{{- fail "config.http.enabled must be true: the probes and the metrics Service use the bridge's HTTP endpoint" }}
{{- end }}
{{- if and (include "xpander-bridge.kafkaSasl" .) (not .Values.secrets.existingSecret) (not .Values.secrets.kafkaSaslPassword) }}
{{- fail "config.kafka.security_protocol is SASL_*: set secrets.kafkaSaslPassword, or secrets.existingSecret holding it" }}
{{- end }}
{{- /* Cross-field checks: JSON Schema cannot compare two values or say why. */}}
{{- if and (gt (int .Values.replicas) 1) (dig "streams" "enabled" true .Values.config) (not (dig "coordination" "enabled" true .Values.config)) }}
{{- fail (printf "replicas is %v but config.coordination.enabled is false: every replica would stream every task and Kafka would get each event %v times; enable coordination or set replicas to 1" .Values.replicas .Values.replicas) }}
{{- end }}
{{- $fullname := include "xpander-bridge.fullname" . }}
{{- if and (eq .Values.workload.kind "StatefulSet") (gt (len $fullname) 52) }}
{{- fail (printf "the StatefulSet's name %q has %d characters, above 52: Kubernetes labels its pods with that name plus an 11-character revision hash (63 at most) and would create none; shorten the release name, set fullnameOverride, or set workload.kind=Deployment" $fullname (len $fullname)) }}
{{- end }}
{{- if dig "coordination" "instance_id" "" .Values.config }}
{{- fail "config.coordination.instance_id: the chart sets it to each pod's name (one value for every replica would make them indistinguishable); remove it" }}
{{- end }}
{{- end }}

{{/* Partitions of the coordination topic: the most replicas that get work. */}}
{{- define "xpander-bridge.coordinationPartitions" -}}
{{- dig "coordination" "partitions" 24 .Values.config | int }}
{{- end }}

{{/*
One egress rule of the NetworkPolicy from its values (dict "name" "rule"):
`to` (peers; none: any address) and `ports` (none: every port). A rule with
neither would admit all egress, which no one means by leaving both empty:
refused, with the way to say it on purpose.
*/}}
{{- define "xpander-bridge.networkPolicy.egressRule" -}}
{{- $rule := .rule }}
{{- if and (empty $rule.to) (empty $rule.ports) }}
{{- fail (printf "networkPolicy.egress.%s has neither `to` nor `ports`, which would allow all egress; give one of them, or set networkPolicy.enabled=false" .name) }}
{{- end }}
{{- if $rule.to }}
- to:
    {{- toYaml $rule.to | nindent 4 }}
  {{- with $rule.ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- else }}
- ports:
    {{- toYaml $rule.ports | nindent 4 }}
{{- end }}
{{- end }}
