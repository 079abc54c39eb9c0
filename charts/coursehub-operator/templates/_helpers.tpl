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
The namespaced permissions, shared by the ClusterRole (all namespaces) and the
per-namespace Roles. Each rule says who needs it. Two callers hold these rights:
  - the operator's own code (operator/coursehub/kube.py, reconcile/, handlers/);
  - helm, which the operator runs to install the z2jh chart: helm creates the
    chart's objects with the operator's identity, so every kind z2jh renders appears
    here. RBAC also refuses to create a Role granting rights its creator lacks (the
    operator holds no `escalate`), so the operator must hold what z2jh's hub Role
    grants (pods, PVCs, secrets, services, events).
Kept off on purpose: `escalate`, `bind`, `impersonate`, nodes, cluster-scoped writes.
*/}}
{{- define "coursehub-operator.namespacedRules" -}}
# The operator's own kinds: kopf lists and watches them; the operator server-side-applies
# only its finalizers (patch) and removes them with a JSON patch (patch).
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
# Secrets: the operator reads the database, OIDC and image pull Secrets and watches
# them for rotation (get/list/watch); helm stores each release revision as a Secret
# and z2jh renders the hub Secret (create/update/patch/delete).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# ConfigMaps: the operator's coursehub-allowlist; z2jh's hub and user-scheduler config.
# Services: the operator's SSO gateway; z2jh's hub, proxy-api and proxy-public.
# ServiceAccounts: z2jh's hub (and optional hook/scheduler) accounts.
# PersistentVolumeClaims: z2jh's hub-db-dir (sqlite-pvc); z2jh's hub Role grants them.
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Pods: z2jh's hub Role grants the hub these verbs to run learners' servers; the operator
# must hold them to create that Role; helm --wait reads pods too.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Events: the operator and kopf post Events on the objects (create); z2jh's hub Role
# grants events get/list/watch, which the operator must hold to create it.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["get", "list", "watch", "create"]
# DaemonSets: the operator's image pre-pullers (one per hub). Deployments: the
# operator's SSO gateway; z2jh's hub, proxy and user-scheduler. StatefulSets: z2jh's
# user-placeholder.
- apiGroups: ["apps"]
  resources: ["daemonsets", "deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# helm --wait/--atomic follows a Deployment's rollout through its ReplicaSets.
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["get", "list", "watch"]
# Jobs: z2jh's hook pre-puller (hook-image-awaiter), if a hub's spec.values enables it.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Roles/RoleBindings: the operator's coursehub-hub-allowlist (the hub reads exactly the
# allowlist ConfigMap); z2jh's hub Role and RoleBinding.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# z2jh's NetworkPolicies (hub, proxy, singleuser) and its optional Ingress.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies", "ingresses"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# z2jh's PodDisruptionBudgets (hub, proxy, user-scheduler).
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}

{{/* Cluster-scoped reads only (see rbac.clusterReads in values.yaml). */}}
{{- define "coursehub-operator.clusterReadRules" -}}
# kopf's resource observer lists and watches CRDs to notice its kinds (re)appearing.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# Namespace labels, for hubs with spec.courses.namespaces: Selector; kopf's namespace
# observer when watching a list of namespaces.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
