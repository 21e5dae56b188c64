"""How many GPUs a replica asks for, checked against the cluster before any actor starts (no endless wait)."""

from __future__ import annotations

import pytest

from pipelines.replicas import PlacementError, gpu_share

CPU_ONLY = [{"CPU": 2.0}]
ONE_GPU = [{"CPU": 16.0, "GPU": 1.0}]
TWO_NODES = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]


@pytest.mark.parametrize(("replicas", "nodes", "share"), [
    (2, CPU_ONLY, 0.0),       # no GPU: one core each
    (1, ONE_GPU, 1.0),        # a GPU of its own
    (2, ONE_GPU, 0.5),        # two replicas share the one GPU
    (3, ONE_GPU, 1 / 3),
    (3, TWO_NODES, 0.5),      # 2 + 1 over two single-GPU nodes
    (2, TWO_NODES, 1.0),
])
def test_the_default_shares_the_clusters_gpus_evenly(replicas: int, nodes: list, share: float) -> None:
    assert gpu_share(replicas, None, nodes) == pytest.approx(share)


def test_a_gpu_share_on_a_cluster_without_gpus_fails_at_once_with_the_figures() -> None:
    with pytest.raises(PlacementError, match=r"2 replicas x 0.5 GPU each cannot be placed: the cluster has 0 GPU"):
        gpu_share(2, 0.5, CPU_ONLY)


def test_more_whole_gpus_than_the_cluster_has_fail() -> None:
    with pytest.raises(PlacementError, match="room for 1 such replicas"):
        gpu_share(2, 1.0, ONE_GPU)
    with pytest.raises(PlacementError, match="room for 2 such replicas"):
        gpu_share(3, 0.6, TWO_NODES)  # 0.6 + 0.6 do not fit one GPU: one replica per GPU


def test_shares_that_fit_are_kept() -> None:
    assert gpu_share(4, 0.5, TWO_NODES) == 0.5
    assert gpu_share(1, 2.0, [{"GPU": 2.0}]) == 2.0


def test_a_fractional_share_above_one_gpu_is_refused() -> None:
    with pytest.raises(PlacementError, match="whole number"):
        gpu_share(1, 1.5, [{"GPU": 4.0}])


def test_cpu_replicas_beyond_the_cores_fail_instead_of_waiting() -> None:
    with pytest.raises(PlacementError, match="3 replicas on CPU need one core each; the cluster has 2"):
        gpu_share(3, None, CPU_ONLY)
