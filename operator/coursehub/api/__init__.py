"""Typed models of coursehub's two kinds; the CRDs are generated from them (see coursehub.crds)."""

from .common import API_VERSION, GROUP, VERSION, Condition, LabelSelector, SecretKeyRef, SecretRef
from .courseimage import CourseImageSpec, CourseImageStatus
from .jupyterhubdeployment import JupyterHubDeploymentSpec, JupyterHubDeploymentStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "CourseImageSpec",
    "CourseImageStatus",
    "JupyterHubDeploymentSpec",
    "JupyterHubDeploymentStatus",
    "LabelSelector",
    "SecretKeyRef",
    "SecretRef",
]
