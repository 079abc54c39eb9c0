"""ECR push credentials for build pods (reconcile/build.py): the operator's own identity gets
ECR's authorization token (moto's server over HTTP stands in for ECR) and hands it to one build
as a dockerconfigjson Secret owned by the Job."""

from __future__ import annotations

import base64
import json

from coursehub.desired.build import ecr_push_secret
from coursehub.reconcile.build import BuildController
from coursehub.settings import Settings
from coursehub.state import Index
from fixtures.ecr import ECR_ACCOUNT, ECR_HOST, ECR_REGION


async def test_ecr_push_token_from_the_operator_identity(ecr_endpoint):
    bc = BuildController(kube=None, index=Index(), settings=Settings(aws_endpoint_url=ecr_endpoint))  # type: ignore[arg-type]
    token = await bc._ecr_token(ECR_ACCOUNT, ECR_REGION)
    user, _, password = base64.b64decode(token).decode().partition(":")
    assert user == "AWS" and password  # what `docker login -u AWS` takes
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "build-x", "uid": "u1"}
    secret = ecr_push_secret("build-x-push", "courses", ECR_HOST, token, owner)
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert config == {"auths": {ECR_HOST: {"auth": token}}}  # for the ECR host only
    assert secret["metadata"]["ownerReferences"] == [owner]  # goes with the Job
