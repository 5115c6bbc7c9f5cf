"""One RBAC-enforcing API server with an audit log for the chart's tests (tests/support/helm.py);
each test installs its own release in its own namespace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.helm import RbacCluster, helm, rbac_cluster
from tests.support.kube import KubeUnavailable


@pytest.fixture(scope="session")
def helm_cluster() -> Iterator[RbacCluster]:
    helm()  # fails with how to install helm-sdkpy
    try:
        with rbac_cluster() as cluster:
            yield cluster
    except KubeUnavailable as exc:
        pytest.fail(str(exc))
