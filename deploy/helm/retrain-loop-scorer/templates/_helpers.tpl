{{/* Names, labels and the per-scorer facts every template shares. */}}

{{- define "rls.fullname" -}}
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

{{- define "rls.baseLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object beside the selector's. */}}
{{- define "rls.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kafka-retrain-loop
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* The labels of an object of the whole release. */}}
{{- define "rls.labels" -}}
{{ include "rls.baseLabels" . }}
{{ include "rls.commonLabels" . }}
{{- end -}}

{{/* The labels of one scorer's objects. Argument: (list $ scorer). */}}
{{- define "rls.scorerLabels" -}}
{{ include "rls.commonLabels" (index . 0) }}
{{ include "rls.selectorLabels" . }}
{{- end -}}

{{/* A scorer's short name: its `name`, else its use case with dashes (a DNS label). Argument: the scorer. */}}
{{- define "rls.scorerShort" -}}
{{- .name | default (.useCase | replace "_" "-") -}}
{{- end -}}

{{/* The StatefulSet's name, also its Service's, PDB's and ScaledObject's: 52 characters at most, so the pods'
controller-revision-hash label stays within 63. Argument: (list $ scorer). */}}
{{- define "rls.scorerName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "rls.fullname" $root) (include "rls.scorerShort" (index . 1)) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "rls.selectorLabels" -}}
{{ include "rls.baseLabels" (index . 0) }}
app.kubernetes.io/component: scorer
kafka-retrain-loop/scorer: {{ include "rls.scorerShort" (index . 1) }}
{{- end -}}

{{/* The consumer group: `groupId`, else ml.client_ids.scorer_group(use case). Argument: the scorer. */}}
{{- define "rls.groupId" -}}
{{- .groupId | default (printf "%s-scorer" (.useCase | replace "_" "-")) -}}
{{- end -}}

{{/* The input topic's actual name, as ml.settings.TopicNames.topic names it: TOPIC_NAMES wins over TOPIC_PREFIX.
Argument: (list $ scorer). */}}
{{- define "rls.inputTopic" -}}
{{- $root := index . 0 -}}
{{- $default := (index . 1).inputTopic -}}
{{- if hasKey $root.Values.topics.names $default -}}
{{- index $root.Values.topics.names $default -}}
{{- else -}}
{{- printf "%s%s" $root.Values.topics.prefix $default -}}
{{- end -}}
{{- end -}}

{{- define "rls.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{- define "rls.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/* The Secret with the Kafka password, and the chart's own (the SASL username, for KEDA; the password when given
as a value). */}}
{{- define "rls.kafkaSecret" -}}
{{- printf "%s-kafka" (include "rls.fullname" .) -}}
{{- end -}}

{{- define "rls.passwordSecret" -}}
{{- .Values.kafka.sasl.existingSecret | default (include "rls.kafkaSecret" .) -}}
{{- end -}}

{{/* The CA's Secret, if any. */}}
{{- define "rls.caSecret" -}}
{{- if .Values.kafka.tls.existingSecret -}}
{{- .Values.kafka.tls.existingSecret -}}
{{- else if .Values.kafka.tls.caCert -}}
{{- printf "%s-kafka-ca" (include "rls.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "rls.caDir" -}}/etc/kafka-ca{{- end -}}

{{- define "rls.trustSecret" -}}
{{- if .Values.modelTrust.publicKeys -}}
{{- printf "%s-trusted-keys" (include "rls.fullname" .) -}}
{{- else -}}
{{- required "modelTrust: name an existingSecret of trusted public keys or give publicKeys" .Values.modelTrust.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "rls.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "rls.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* KEDA's name of a SASL mechanism (its kafka scaler's `sasl` parameter). */}}
{{- define "rls.kedaSasl" -}}
{{- $names := dict "SCRAM-SHA-512" "scram_sha512" "SCRAM-SHA-256" "scram_sha256" "PLAIN" "plaintext" -}}
{{- index $names .Values.kafka.sasl.mechanism -}}
{{- end -}}

{{/* A scorer's autoscaling: the chart's, under its own overrides; maxReplicaCount defaults to the partitions.
Argument: (list $ scorer); renders YAML to read back with fromYaml. */}}
{{- define "rls.autoscaling" -}}
{{- $root := index . 0 -}}
{{- $scaling := mergeOverwrite (deepCopy $root.Values.autoscaling) ((index . 1).autoscaling | default dict) -}}
{{- if not $scaling.maxReplicaCount -}}
{{- $_ := set $scaling "maxReplicaCount" $root.Values.topics.partitions -}}
{{- end -}}
{{- toYaml $scaling -}}
{{- end -}}
