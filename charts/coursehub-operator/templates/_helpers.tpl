{{/* Names and labels shared by every template. */}}

{{- define "coursehub-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coursehub-operator.fullname" -}}
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

{{- define "coursehub-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coursehub-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "coursehub-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "coursehub-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coursehub
{{- end }}

{{- define "coursehub-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "coursehub-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "coursehub-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The webhook Service of one Deployment: (list $ shardName), shardName "" without shards. The
leader of that Deployment writes its EndpointSlice "<this name>-leader" (docs/scaling.md).
*/}}
{{- define "coursehub-operator.webhookService" -}}
{{- $root := index . 0 }}
{{- $name := include "coursehub-operator.fullname" $root }}
{{- with index . 1 }}
{{- $name = printf "%s-%s" $name . | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- printf "%s-webhook" $name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coursehub-operator.tenantClusterRole" -}}
{{- printf "%s-tenant" (include "coursehub-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The operator's own namespaced permissions, shared by the ClusterRole (all namespaces) and
the per-namespace Roles. Each rule says who needs it. Helm does not run with these: every
Helm action for a hub impersonates the hub's tenant ServiceAccount (the tenant rules
below), so the operator holds none of z2jh's rights (pods, Secrets beyond get, PVCs).
Kept off on purpose: `escalate`, nodes, cluster-scoped writes, Secrets list/watch,
`bind` and `impersonate` beyond the names below.
*/}}
{{- define "coursehub-operator.namespacedRules" -}}
# The operator's own kinds: kopf lists and watches them; the operator adds its finalizer
# with a merge patch guarded by uid and resourceVersion, and removes it with a JSON patch
# (both: patch). It never updates or deletes a user's object.
- apiGroups: ["coursehub.dev"]
  resources: ["courseimages", "jupyterhubdeployments"]
  verbs: ["get", "list", "watch", "patch"]
# Status is written through the status subresource only, by server-side apply.
- apiGroups: ["coursehub.dev"]
  resources: ["courseimages/status", "jupyterhubdeployments/status"]
  verbs: ["get", "patch"]
# Owned objects carry ownerReferences with blockOwnerDeletion: true, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only to whoever may
# update the owner's finalizers.
- apiGroups: ["coursehub.dev"]
  resources: ["courseimages/finalizers", "jupyterhubdeployments/finalizers"]
  verbs: ["update"]
# Secrets: read one by one, only those a hub or course references (database URL, OIDC
# client, shared password, image pull secret, a build's git credential and push webhook
# secret). No list or watch: the operator never sees a namespace's other Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# ConfigMaps: the hub's coursehub-allowlist (and its shards). list/watch: the hub's
# allowlist Role grants them on those names, and RBAC lets the operator create a Role
# only with rights it holds.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Services: the SSO gateway's. ServiceAccounts: each hub's tenant account (impersonated
# by Helm, never mounted). `list` (by the hub's label, once per process, as for every kind
# below): objects a hub no longer wants are pruned after an operator restart too.
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Events on the operator's objects.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# DaemonSets: the image pre-pullers (one per hub and node group). Deployments: the SSO
# gateway.
- apiGroups: ["apps"]
  resources: ["daemonsets", "deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Roles/RoleBindings: the hub's allowlist Role and its binding; the tenant RoleBinding.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "create", "patch", "delete"]
# NetworkPolicies: proxy-public only from the gateway; pullers deny all traffic.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "create", "patch", "delete"]
{{- if .Values.build.image }}
# Course builds (docs/builds.md), only when builds are on (build.image): one Job per build in
# the CourseImage's namespace; its pod's termination message (the digest) and, on failure,
# the last lines of its log.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# A build Job's FailedCreate Events: its pod refused (Pod Security, quota) is reported at once.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
{{- if .Values.build.ecrPush }}
# One short-lived ECR push Secret per build, owned by its Job (build.ecrPush only).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
{{- end }}
{{- end }}
# The tenant RoleBinding refers to the tenant ClusterRole: `bind` on that one role lets the
# operator create the binding without holding the tenant's rights itself.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles"]
  verbs: ["bind"]
  resourceNames: [{{ include "coursehub-operator.tenantClusterRole" . | quote }}]
# Helm acts as the hub's tenant ServiceAccount. RBAC can restrict impersonation by name,
# not by "the hub's own namespace": the rule covers these names in every namespace it
# applies to (docs/install.md).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["impersonate"]
  resourceNames:
    {{- range (prepend .Values.tenancy.extraServiceAccountNames .Values.tenancy.serviceAccountName) }}
    - {{ . | quote }}
    {{- end }}
{{- end }}

{{/*
What Helm may do for one hub, in the hub's namespace only (the operator binds this
ClusterRole there with a RoleBinding). It is exactly
operator/coursehub/desired/tenancy.py's TENANT_RULES (a test compares them): what z2jh
renders, plus Helm's release Secrets. z2jh's hub Role grants pods, PVCs, Secrets,
Services and Events; RBAC lets Helm create that Role only because it holds them.
*/}}
{{- define "coursehub-operator.tenantRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies", "ingresses"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}

{{/* Cluster-scoped reads only (see rbac.clusterReads in values.yaml). */}}
{{- define "coursehub-operator.clusterReadRules" -}}
# kopf's resource observer lists and watches CRDs to notice its kinds (re)appearing.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# Namespace labels, for hubs with spec.courses.namespaces: Selector; whether a deleted
# hub's namespace is terminating (its release then goes with the namespace).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
Shards (values.shards): each a name and its namespaces; a namespace in two shards, a bad
name or an empty list stops the render with a message naming it. With shards, the
namespaces the chart grants rights in are the shards' (watch.namespaces is not used).
*/}}
{{- define "coursehub-operator.checkShards" -}}
{{- $owner := dict }}
{{- range $i, $shard := .Values.shards }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$" (toString $shard.name)) }}
{{- fail (printf "shards[%d].name %q must be a DNS label of at most 20 characters (a-z, 0-9, -), e.g. a" $i (toString $shard.name)) }}
{{- end }}
{{- if not $shard.namespaces }}
{{- fail (printf "shards[%d] (%s) lists no namespaces: give it shards[%d].namespaces, e.g. [jupyter]" $i $shard.name $i) }}
{{- end }}
{{- range $ns := $shard.namespaces }}
{{- if hasKey $owner $ns }}
{{- fail (printf "shards: namespace %s is listed by shards %s and %s; list each namespace in one shard only" $ns (get $owner $ns) $shard.name) }}
{{- end }}
{{- $_ := set $owner $ns $shard.name }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicas is %d but leaderElection.enabled is false: two operators would race; enable leader election or set replicas=1" (int .Values.replicas)) }}
{{- end }}
{{- end }}

{{- define "coursehub-operator.rbacNamespaces" -}}
{{- $out := list }}
{{- if .Values.shards }}
{{- range .Values.shards }}{{- range .namespaces }}{{- $out = append $out . }}{{- end }}{{- end }}
{{- else }}
{{- $out = .Values.watch.namespaces }}
{{- end }}
{{- toJson $out }}
{{- end }}
