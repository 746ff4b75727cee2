{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "migration-runner.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; room is left for the "-migrate" / "-db" suffixes. */}}
{{- define "migration-runner.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "migration-runner.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "migration-runner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "migration-runner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "migration-runner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "migration-runner.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the password: the user's, or the one this chart creates. */}}
{{- define "migration-runner.secretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- printf "%s-db" (include "migration-runner.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
Hook annotations. Call with (dict "root" $ "weight" N "deletePolicy" "job"|"secret").
helm:   pre-install,pre-upgrade hooks ordered by helm.sh/hook-weight.
argocd: PreSync hooks ordered by sync waves.
The Job is deleted once it succeeded (a failed one stays for inspection until the next
run replaces it); the Secret is only replaced on the next run, because the application
keeps reading it.
*/}}
{{- define "migration-runner.hookAnnotations" -}}
{{- $style := .root.Values.hooks.style -}}
{{- if eq $style "helm" }}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
{{- if eq .deletePolicy "job" }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- else }}
helm.sh/hook-delete-policy: before-hook-creation
{{- end }}
{{- else if eq $style "argocd" }}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/sync-wave: {{ .weight | quote }}
{{- if eq .deletePolicy "job" }}
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation,HookSucceeded
{{- else }}
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
{{- end }}
{{- else }}
{{- fail (printf "hooks.style must be helm or argocd, not %q" $style) }}
{{- end }}
{{- end -}}

{{/* Connection settings shared by the Job and the app's wait init container. */}}
{{- define "migration-runner.dbEnv" -}}
- name: DB_HOST
  value: {{ .Values.database.host | quote }}
- name: DB_PORT
  value: {{ .Values.database.port | quote }}
- name: DB_NAME
  value: {{ .Values.database.name | quote }}
- name: DB_USER
  value: {{ .Values.database.user | quote }}
- name: DB_PASSWORD_FILE
  value: /var/run/secrets/db/password
- name: DB_SSL
  value: {{ .Values.database.sslMode | quote }}
{{- if .Values.database.sslRootCertSecret.name }}
- name: DB_SSL_ROOT_CERT
  value: /var/run/secrets/db-ca/ca.crt
{{- end }}
- name: MIGRATIONS_TABLE
  value: {{ .Values.migrations.table | quote }}
- name: DB_WAIT_TIMEOUT
  value: {{ .Values.timeouts.dbWait | quote }}
- name: DB_CONNECT_TIMEOUT
  value: {{ .Values.timeouts.dbConnect | quote }}
- name: MIGRATION_LOCK_TIMEOUT
  value: {{ .Values.timeouts.lock | quote }}
- name: LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: LOG_LEVEL
  value: {{ .Values.log.level | quote }}
{{- end -}}

{{- define "migration-runner.dbVolumeMounts" -}}
- name: db-credentials
  mountPath: /var/run/secrets/db
  readOnly: true
{{- if .Values.database.sslRootCertSecret.name }}
- name: db-ca
  mountPath: /var/run/secrets/db-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "migration-runner.dbVolumes" -}}
- name: db-credentials
  secret:
    secretName: {{ include "migration-runner.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.database.existingSecretKey }}
        path: password
{{- if .Values.database.sslRootCertSecret.name }}
- name: db-ca
  secret:
    secretName: {{ .Values.database.sslRootCertSecret.name }}
    defaultMode: 0444
    items:
      - key: {{ .Values.database.sslRootCertSecret.key }}
        path: ca.crt
{{- end }}
{{- end -}}
