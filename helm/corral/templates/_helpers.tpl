{{/* Names, labels and the pieces every workload shares. */}}

{{- define "corral.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "corral.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "corral.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "corral.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "corral.component" (dict "root" $ "name" "compute") -> <fullname>-compute */}}
{{- define "corral.component" -}}
{{- printf "%s-%s" (include "corral.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "corral.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "corral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: corral
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* "corral.selectorLabels" (dict "root" $ "name" "compute") */}}
{{- define "corral.selectorLabels" -}}
app.kubernetes.io/name: {{ include "corral.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "corral.componentLabels" -}}
{{ include "corral.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "corral.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "corral.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "corral.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* librdkafka property name -> its CORRAL_KAFKA_PROP_ variable (sasl.password -> CORRAL_KAFKA_PROP_SASL_PASSWORD) */}}
{{- define "corral.propEnvName" -}}
{{- printf "CORRAL_KAFKA_PROP_%s" (. | upper | replace "." "_" | replace "-" "_") -}}
{{- end -}}

{{/*
The Kafka settings of a process: bootstrap, prefix, replication factor, the client properties
(plain, then secret references; a component's secretProperties override the global ones), and
CORRAL_KAFKA_CONFIG when a properties file comes from a Secret.
"corral.kafkaEnv" (dict "root" $ "component" .Values.compute)
*/}}
{{- define "corral.kafkaEnv" -}}
{{- $v := .root.Values -}}
- name: CORRAL_KAFKA_BOOTSTRAP
  value: {{ $v.kafka.bootstrapServers | quote }}
- name: CORRAL_TOPIC_PREFIX
  value: {{ $v.kafka.topicPrefix | quote }}
- name: CORRAL_REPLICATION_FACTOR
  value: {{ $v.kafka.replicationFactor | quote }}
{{- if $v.kafka.configSecret.name }}
- name: CORRAL_KAFKA_CONFIG
  value: /etc/corral/kafka-config/{{ $v.kafka.configSecret.key }}
{{- end }}
{{- range $name, $value := $v.kafka.properties }}
- name: {{ include "corral.propEnvName" $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- $secret := deepCopy ($v.kafka.secretProperties | default dict) -}}
{{- $own := dict -}}
{{- if and .component .component.kafka -}}{{- $own = .component.kafka.secretProperties | default dict -}}{{- end -}}
{{- $secret = mergeOverwrite $secret (deepCopy $own) -}}
{{- range $name, $ref := $secret }}
- name: {{ include "corral.propEnvName" $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secretName | quote }}
      key: {{ $ref.secretKey | quote }}
{{- end }}
{{- end -}}

{{- define "corral.kafkaVolumeMounts" -}}
{{- if .Values.kafka.configSecret.name }}
- name: kafka-config
  mountPath: /etc/corral/kafka-config
  readOnly: true
{{- end }}
{{- if .Values.kafka.tlsSecret }}
- name: kafka-tls
  mountPath: /etc/corral/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "corral.kafkaVolumes" -}}
{{- if .Values.kafka.configSecret.name }}
- name: kafka-config
  secret:
    secretName: {{ .Values.kafka.configSecret.name | quote }}
{{- end }}
{{- if .Values.kafka.tlsSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tlsSecret | quote }}
{{- end }}
{{- end -}}

{{/* Scheduling and security settings of every pod. */}}
{{- define "corral.podCommon" -}}
serviceAccountName: {{ include "corral.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "corral.probes" -}}
livenessProbe:
  httpGet: { path: /healthz, port: admin }
  {{- toYaml .Values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet: { path: /readyz, port: admin }
  {{- toYaml .Values.readinessProbe | nindent 2 }}
{{- end -}}

{{/* The consumer groups of a stream service: name, group, topic (the lag KEDA scales on). */}}
{{- define "corral.consumerGroups" -}}
{{- $p := .root.Values.kafka.topicPrefix -}}
{{- $app := .component.applicationId | default .name -}}
{{- if eq .name "validator" }}
- { group: {{ $app | quote }}, topic: {{ printf "%sevents.raw" $p | quote }} }
{{- else if eq .name "identity" }}
- { group: {{ printf "%s-stitcher" $app | quote }}, topic: {{ printf "%sevents.valid" $p | quote }} }
- { group: {{ $app | quote }}, topic: {{ printf "%sidentity.events-by-space" $p | quote }} }
{{- else if eq .name "compute" }}
- { group: {{ $app | quote }}, topic: {{ printf "%sevents.resolved" $p | quote }} }
{{- else if eq .name "fanout" }}
- { group: {{ $app | quote }}, topic: {{ printf "%saudiences.membership" $p | quote }} }
{{- end }}
{{- end -}}
