{{/* Image reference: a name containing "/" is used as it is, otherwise <hub>/<name>:<tag>[-<variant>]. */}}
{{- define "mazu.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- if contains "/" $name -}}
{{- $name -}}
{{- else -}}
{{- printf "%s/%s:%s" $root.Values.hub $name ($root.Values.tag | default $root.Chart.AppVersion) -}}
{{- with $root.Values.variant }}-{{ . }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every top-level object. */}}
{{- define "mazu.labels" -}}
app.kubernetes.io/part-of: mazu-ztunnel
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "mazu.curatorName" -}}mazu-curator{{- end -}}
{{- define "mazu.witnessName" -}}mazu-witness{{- end -}}

{{/* Namespace of the witness objects. */}}
{{- define "mazu.witnessNamespace" -}}
{{- .Values.witness.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* Log origin, which is also the audience of registration tokens. */}}
{{- define "mazu.logOrigin" -}}
{{- .Values.curator.logOrigin | default (printf "mazu-curator.%s.svc/%s" .Release.Namespace (.Values.multiCluster.clusterName | default "Kubernetes")) -}}
{{- end -}}

{{/* URL of the curator's registration API inside the cluster. */}}
{{- define "mazu.curatorURL" -}}
{{- printf "http://%s.%s.svc:%d" (include "mazu.curatorName" .) .Release.Namespace (int .Values.curator.ports.http) -}}
{{- end -}}

{{/* Address of istiod for the CA and XDS clients. */}}
{{- define "mazu.istiodAddress" -}}
{{- printf "istiod%s.%s.svc:15012" (ternary "" (printf "-%s" .Values.revision) (eq .Values.revision "")) .Values.istioNamespace -}}
{{- end -}}

{{/* The agent's Kubernetes user name, which the admission policy matches. */}}
{{- define "mazu.agentUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace .Values.resourceName -}}
{{- end -}}
