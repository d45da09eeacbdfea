{{/* Names, labels and the pieces every pod of the chart shares. */}}

{{- define "notifications.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "notifications.fullname" -}}
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

{{/* The labels every object carries. */}}
{{- define "notifications.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "notifications.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: notifications
{{- end -}}

{{/* Selector of one component's pods: dict "root" $ "component" "api". */}}
{{- define "notifications.selector" -}}
app.kubernetes.io/name: {{ include "notifications.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "notifications.componentName" -}}
{{- printf "%s-%s" (include "notifications.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "notifications.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "notifications.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image, pinned: the tag (default: appVersion) and the digest when given. */}}
{{- define "notifications.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: `latest` is not a pinned version; give a release tag or leave it empty (the chart's appVersion)" -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* An env entry read from an existing Secret: dict "name" "ENV" "ref" (dict name key). */}}
{{- define "notifications.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "the Secret name for %s" .name) .ref.name | quote }}
      key: {{ required (printf "the Secret key for %s" .name) .ref.key | quote }}
{{- end -}}

{{/* DATABASE_URL and the Kafka credentials: every pod that talks to both. */}}
{{- define "notifications.infraSecretEnv" -}}
{{ include "notifications.secretEnv" (dict "name" "DATABASE_URL" "ref" .Values.database.urlSecret) }}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
{{ include "notifications.secretEnv" (dict "name" "KAFKA_SASL_PASSWORD" "ref" .Values.kafka.sasl.passwordSecret) }}
{{- end }}
{{- end -}}

{{- define "notifications.kafkaTls" -}}
{{- has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}
{{- end -}}

{{/* Volumes: a writable /tmp (the root filesystem is read-only) and the Kafka TLS files. */}}
{{- define "notifications.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and (eq (include "notifications.kafkaTls" .) "true") .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret.name | quote }}
    items:
      - key: {{ .Values.kafka.tls.caSecret.key | quote }}
        path: ca.crt
{{- end }}
{{- if and (eq (include "notifications.kafkaTls" .) "true") .Values.kafka.tls.clientCertSecret.name }}
- name: kafka-client-cert
  secret:
    secretName: {{ .Values.kafka.tls.clientCertSecret.name | quote }}
    items:
      - key: {{ .Values.kafka.tls.clientCertSecret.certKey | quote }}
        path: tls.crt
      - key: {{ .Values.kafka.tls.clientCertSecret.keyKey | quote }}
        path: tls.key
{{- end }}
{{- end -}}

{{- define "notifications.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if and (eq (include "notifications.kafkaTls" .) "true") .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/notifications/kafka-ca
  readOnly: true
{{- end }}
{{- if and (eq (include "notifications.kafkaTls" .) "true") .Values.kafka.tls.clientCertSecret.name }}
- name: kafka-client-cert
  mountPath: /etc/notifications/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{/* The pod-level settings every pod shares. */}}
{{- define "notifications.podSpecCommon" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
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

{{/* The dispatcher's replicas when autoscaling is on: min..max, max capped at the partitions. */}}
{{- define "notifications.maxReplicas" -}}
{{- min (int .Values.autoscaling.maxReplicas) (int .Values.kafka.partitions) -}}
{{- end -}}
