{{/* Chart name. */}}
{{- define "nfs3-provisioner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already holds the chart name. */}}
{{- define "nfs3-provisioner.fullname" -}}
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

{{- define "nfs3-provisioner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nfs3-provisioner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nfs3-provisioner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nfs3-provisioner.labels" -}}
helm.sh/chart: {{ include "nfs3-provisioner.chart" . }}
{{ include "nfs3-provisioner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "nfs3-provisioner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nfs3-provisioner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nfs3-provisioner.leaseName" -}}
{{- default (include "nfs3-provisioner.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "nfs3-provisioner.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* True (non-empty) when the default StorageClass is to be rendered. */}}
{{- define "nfs3-provisioner.defaultClassEnabled" -}}
{{- if and .Values.storageClass.create (or .Values.nfs.server (eq .Values.backend "mounted")) }}true{{ end }}
{{- end }}

{{/* Is a value set? Unset: missing, null or "". false and 0 count as set. */}}
{{- define "nfs3-provisioner.isSet" -}}
{{- if not (or (kindIs "invalid" .) (and (kindIs "string" .) (eq . ""))) }}true{{ end }}
{{- end }}

{{/*
One StorageClass. Called with a dict:
  root:  the top-level context
  class: a map with name and the optional keys of storageClass/extraStorageClasses
  server, share: already resolved (empty: the provisioner's fallback applies)
*/}}
{{- define "nfs3-provisioner.storageClass" -}}
{{- $root := .root }}
{{- $c := .class }}
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {{ required "every StorageClass needs a name" $c.name }}
  labels:
    {{- include "nfs3-provisioner.labels" $root | nindent 4 }}
    {{- with $c.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or $c.defaultClass $c.annotations }}
  annotations:
    {{- if $c.defaultClass }}
    storageclass.kubernetes.io/is-default-class: "true"
    {{- end }}
    {{- with $c.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
provisioner: {{ include "nfs3-provisioner.provisionerName" $root | quote }}
reclaimPolicy: {{ default "Delete" $c.reclaimPolicy }}
volumeBindingMode: {{ default "Immediate" $c.volumeBindingMode }}
{{- /* Expansion is bookkeeping the provisioner does (README, "Expansion"): on unless set false. */}}
allowVolumeExpansion: {{ if include "nfs3-provisioner.isSet" $c.allowVolumeExpansion }}{{ $c.allowVolumeExpansion }}{{ else }}true{{ end }}
{{- with $c.mountOptions }}
mountOptions:
  {{- range . }}
  - {{ . | toString | quote }}
  {{- end }}
{{- end }}
parameters:
  {{- if .server }}
  server: {{ .server | toString | quote }}
  {{- end }}
  {{- if .share }}
  share: {{ .share | toString | quote }}
  {{- end }}
  {{- range $key := list "port" "mountPort" "pathPattern" "subDir" "onDelete" "archiveOnDelete" "mode" "uid" "gid" "directorySharing" "existingDirectory" "caseInsensitive" }}
  {{- $v := get $c $key }}
  {{- if include "nfs3-provisioner.isSet" $v }}
  {{ $key }}: {{ $v | toString | quote }}
  {{- end }}
  {{- end }}
{{- end }}

{{/* Provisioner name; storageClass.provisionerName is honoured as in the nfs-subdir chart. */}}
{{- define "nfs3-provisioner.provisionerName" -}}
{{- default .Values.provisionerName .Values.storageClass.provisionerName }}
{{- end }}
