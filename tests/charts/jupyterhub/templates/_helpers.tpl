{{- define "jupyterhub.labels" -}}
app: jupyterhub
release: {{ .Release.Name }}
chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- /* hub.extraEnv as z2jh takes it: a name-keyed dict (string or EnvVar body) or an EnvVar list. */}}
{{- define "jupyterhub.extraEnv" -}}
{{- if kindIs "map" . }}
{{- range $name, $v := . }}
- name: {{ $name }}
{{- if kindIs "map" $v }}
{{- toYaml $v | nindent 2 }}
{{- else }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}
{{- else if . }}
{{- toYaml . }}
{{- end }}
{{- end }}
