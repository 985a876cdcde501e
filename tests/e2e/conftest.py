from __future__ import annotations

import pytest

from .harness import Cluster


@pytest.fixture
def make_cluster(tmp_path):
    """Factory for clusters; every process they start is stopped at the end of the test."""
    clusters: list[Cluster] = []

    def make(**kwargs) -> Cluster:
        workdir = tmp_path / f"cluster{len(clusters)}"
        workdir.mkdir()
        cluster = Cluster(workdir, **kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """A running coordinator (lease TTL 2 s) and no actors yet."""
    c = make_cluster()
    c.start_coordinator()
    return c


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory) -> Cluster:
    """One coordinator for a whole module of tests that do not disturb each other."""
    c = Cluster(tmp_path_factory.mktemp("shared"))
    c.start_coordinator()
    yield c
    c.stop()
