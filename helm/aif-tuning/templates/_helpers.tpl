{{/* Names, labels and the pieces both Deployments share. */}}

{{- define "aif.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aif.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aif.labels" -}}
{{ include "aif.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "aif.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "aif.claim" -}}
{{ .Values.persistence.existingClaim | default (printf "%s-data" (include "aif.fullname" .)) }}
{{- end -}}

{{/* Refuse combinations the service cannot run: several orchestrators on SQLite. */}}
{{- define "aif.check" -}}
{{- if and (gt (int .Values.orchestrator.replicas) 1) (not .Values.database.urlSecret) -}}
{{- fail "orchestrator.replicas > 1 needs PostgreSQL: set database.urlSecret" -}}
{{- end -}}
{{- if and (hasPrefix "SASL" .Values.kafka.securityProtocol) (not .Values.kafka.credentialsSecret) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.credentialsSecret" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- end -}}

{{/* Environment beyond the ConfigMap: the secrets, by reference only. */}}
{{- define "aif.secretEnv" -}}
{{- if .Values.database.urlSecret }}
- name: AIF_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ .Values.database.urlSecret }}, key: url}}
{{- end }}
{{- if .Values.kafka.credentialsSecret }}
- name: AIF_KAFKA__SASL_PLAIN_USERNAME
  valueFrom: {secretKeyRef: {name: {{ .Values.kafka.credentialsSecret }}, key: username}}
- name: AIF_KAFKA__SASL_PLAIN_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .Values.kafka.credentialsSecret }}, key: password}}
{{- end }}
{{- end -}}

{{- define "aif.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "aif.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{/* Volumes of both Deployments: the shared data, scratch, Kafka's CA, extra recipes. */}}
{{- define "aif.volumes" -}}
- name: data
  persistentVolumeClaim: {claimName: {{ include "aif.claim" . }}}
- name: tmp
  emptyDir: {}
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret: {secretName: {{ .Values.kafka.caSecret }}}
{{- end }}
{{- if .Values.extraRecipes }}
- name: recipes
  configMap:
    name: {{ include "aif.fullname" . }}-recipes
    items:
      {{- range $task, $_ := .Values.extraRecipes }}
      - {key: {{ $task }}, path: {{ $task }}/recipe.yaml}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "aif.volumeMounts" -}}
- {name: data, mountPath: /data}
- {name: tmp, mountPath: /tmp}
{{- if .Values.kafka.caSecret }}
- {name: kafka-ca, mountPath: /etc/aif/kafka-ca, readOnly: true}
{{- end }}
{{- if .Values.extraRecipes }}
- {name: recipes, mountPath: /opt/aif/lib/python3.11/site-packages/recipes/site, readOnly: true}
{{- end }}
{{- end -}}
