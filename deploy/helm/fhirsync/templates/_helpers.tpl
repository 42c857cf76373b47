{{/*
fhirsync.name is the chart's name, or nameOverride.
*/}}
{{- define "fhirsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
fhirsync.fullname names the release's objects (at most 63 characters, a DNS
label).
*/}}
{{- define "fhirsync.fullname" -}}
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

{{/*
fhirsync.selectorLabels select the release's pods; they never change over
upgrades (a Deployment's selector is immutable).
*/}}
{{- define "fhirsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fhirsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
fhirsync.labels go on every object.
*/}}
{{- define "fhirsync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fhirsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fhirsync
{{- end -}}

{{/*
fhirsync.serviceAccountName is the service account the pods run as.
*/}}
{{- define "fhirsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fhirsync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
fhirsync.image is repository@digest, or repository:tag (tag defaulting to
the appVersion).
*/}}
{{- define "fhirsync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
fhirsync.secretName is the Secret mounted for FHIRSYNC_…_FILE variables,
empty when there is none.
*/}}
{{- define "fhirsync.secretName" -}}
{{- if .Values.secret.create -}}
{{- default (include "fhirsync.fullname" .) .Values.secret.name -}}
{{- else -}}
{{- .Values.secret.name -}}
{{- end -}}
{{- end -}}

{{/*
fhirsync.config is the configuration file. listen, metrics_listen, data_dir
and log.format are set in the environment instead (see fhirsync.podEnv),
where they win over the image's own FHIRSYNC_… defaults.
*/}}
{{- define "fhirsync.config" -}}
{{- toYaml .Values.config -}}
{{- end -}}

{{/*
fhirsync.checks stops rendering on values that would run but misbehave.
Several replicas need one shared database: SQLite in each pod's own volume
would give every replica a queue, leases and sync log of its own.
*/}}
{{- define "fhirsync.checks" -}}
{{- $db := dig "database" "url" "" .Values.config -}}
{{- $dbFromSecret := and (include "fhirsync.secretName" .) (hasKey .Values.secret.env "FHIRSYNC_DATABASE_URL") -}}
{{- if and (gt (int .Values.replicaCount) 1) (not $dbFromSecret) (not (hasPrefix "postgres" $db)) -}}
{{- fail "replicaCount > 1 needs PostgreSQL: set secret.env.FHIRSYNC_DATABASE_URL with a Secret (secret.name or secret.create), or config.database.url to a postgres:// URL" -}}
{{- end -}}
{{- if and .Values.azureWorkloadIdentity.enabled (not .Values.azureWorkloadIdentity.clientId) -}}
{{- fail "azureWorkloadIdentity.enabled needs azureWorkloadIdentity.clientId (the managed identity's client id)" -}}
{{- end -}}
{{- if and .Values.azureWorkloadIdentity.enabled (not .Values.serviceAccount.create) -}}
{{- fail "azureWorkloadIdentity.enabled needs serviceAccount.create (the chart annotates its service account); annotate your own otherwise and leave this off" -}}
{{- end -}}
{{- if and .Values.secret.create (not .Values.secret.data) -}}
{{- fail "secret.create needs secret.data" -}}
{{- end -}}
{{- if .Values.secret.create -}}
{{- range $var, $key := .Values.secret.env -}}
{{- if not (hasKey $.Values.secret.data $key) -}}
{{- fail (printf "secret.env.%s names key %s, which secret.data does not hold (set secret.env.%s: null to drop it)" $var $key $var) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
fhirsync.podEnv is the environment shared by the server and the doctor
test pod.
*/}}
{{- define "fhirsync.podEnv" -}}
- name: FHIRSYNC_CONFIG
  value: /etc/fhirsync/config.yaml
- name: FHIRSYNC_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.service.port) | quote }}
- name: FHIRSYNC_METRICS_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
- name: FHIRSYNC_DATA_DIR
  value: /var/lib/fhirsync
- name: FHIRSYNC_LOG_FORMAT
  value: {{ dig "log" "format" "json" .Values.config | quote }}
{{- if include "fhirsync.secretName" . }}
{{- range $var, $key := .Values.secret.env }}
- name: {{ printf "%s_FILE" $var }}
  value: {{ printf "/var/run/secrets/fhirsync/%s" $key | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
fhirsync.podVolumes are the volumes of the server and the doctor test pod:
the configuration, the secret files, and writable data and temporary
directories under a read-only root file system.
*/}}
{{- define "fhirsync.podVolumes" -}}
- name: config
  configMap:
    name: {{ include "fhirsync.fullname" . }}
{{- if include "fhirsync.secretName" . }}
- name: secrets
  secret:
    secretName: {{ include "fhirsync.secretName" . }}
    defaultMode: 0440
    items:
{{- range $var, $key := .Values.secret.env }}
      - key: {{ $key | quote }}
        path: {{ $key | quote }}
{{- end }}
{{- end }}
- name: data
  emptyDir:
    sizeLimit: 1Gi
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{/*
fhirsync.volumeMounts mount fhirsync.podVolumes.
*/}}
{{- define "fhirsync.volumeMounts" -}}
- name: config
  mountPath: /etc/fhirsync
  readOnly: true
{{- if include "fhirsync.secretName" . }}
- name: secrets
  mountPath: /var/run/secrets/fhirsync
  readOnly: true
{{- end }}
- name: data
  mountPath: /var/lib/fhirsync
- name: tmp
  mountPath: /tmp
{{- end -}}
