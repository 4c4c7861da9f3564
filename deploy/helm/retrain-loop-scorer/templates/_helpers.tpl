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

{{/* The variables every container of the project image shares: Kafka (with a role's credentials), the schema
registry, topic naming, the trusted keys. Argument: (list $ sasl-username username-value-name password-Secret
password-key); renders a list of env items. */}}
{{- define "rls.clientEnv" -}}
{{- $root := index . 0 -}}
{{- $v := $root.Values -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" $v.kafka.bootstrapServers | quote }}
- name: SCHEMA_REGISTRY_URL
  value: {{ required "schemaRegistry.url is required" $v.schemaRegistry.url | quote }}
- name: TOPIC_PREFIX
  value: {{ $v.topics.prefix | quote }}
{{- with $v.topics.names }}
- name: TOPIC_NAMES
  value: {{ toJson . | quote }}
{{- end }}
- name: MODEL_TRUSTED_KEYS_DIR
  value: {{ $v.modelTrust.mountPath | quote }}
- name: TF_CPP_MIN_LOG_LEVEL
  value: "2"
{{- if ne $v.kafka.securityProtocol "PLAINTEXT" }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $v.kafka.securityProtocol | quote }}
{{- end }}
{{- if include "rls.sasl" $root }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $v.kafka.sasl.mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ required (printf "%s is required with SASL" (index . 2)) (index . 1) | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ index . 3 }}
      key: {{ index . 4 }}
{{- end }}
{{- if include "rls.caSecret" $root }}
- name: KAFKA_SSL_CA_LOCATION
  value: {{ printf "%s/%s" (include "rls.caDir" $root) $v.kafka.tls.caKey | quote }}
{{- end }}
{{- /* librdkafka key -> variable, as ml.kafka_client.env_key reads it back ("_" is "__"). */}}
{{- range $key, $value := $v.kafka.properties }}
- name: {{ printf "KAFKA_%s" ($key | replace "_" "__" | replace "." "_" | upper) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* The use cases that get a live monitor: monitor.useCases, else each scorer's, once each (a second monitor of a
use case would act twice). Renders a JSON list. */}}
{{- define "rls.monitoredUseCases" -}}
{{- $out := list -}}
{{- range $useCase := .Values.monitor.useCases | default (list) -}}
{{- $out = append $out $useCase -}}
{{- end -}}
{{- if not $out -}}
{{- range $scorer := .Values.scorers -}}
{{- $out = append $out $scorer.useCase -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $out) -}}
{{- end -}}

{{/* A monitor's Deployment and Service name. Argument: (list $ use case). */}}
{{- define "rls.monitorName" -}}
{{- printf "%s-%s-monitor" (include "rls.fullname" (index . 0)) ((index . 1) | replace "_" "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rls.monitorSelectorLabels" -}}
{{ include "rls.baseLabels" (index . 0) }}
app.kubernetes.io/component: monitor
kafka-retrain-loop/monitor: {{ (index . 1) | replace "_" "-" }}
{{- end -}}

{{- define "rls.monitorLabels" -}}
{{ include "rls.commonLabels" (index . 0) }}
{{ include "rls.monitorSelectorLabels" . }}
{{- end -}}

{{/* The chart's own Secret of the monitors' passwords given as values (their Kafka role's, the loop's; the Airflow
API user's). */}}
{{- define "rls.monitorSecret" -}}
{{- printf "%s-monitor" (include "rls.fullname" .) -}}
{{- end -}}
