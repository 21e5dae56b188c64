"""The streaming runtime on a real Ray: order, backpressure, quarantine, cache.

The model is the real architecture with untrained weights: these tests are about the runtime, not accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

from connectors.records import AudioClip, Frame, Quarantined, Sample, encode_png, encode_wav
from pipelines.replicas import Inference, ReplicaPool
from pipelines.runtime import run_stream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from model.config import InspectorConfig
    from model.factory_model import FactoryInspector

    out = tmp_path_factory.mktemp("model")
    FactoryInspector(InspectorConfig()).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pool(ray_cluster, model_dir):
    pool = ReplicaPool(str(model_dir), replicas=2)
    yield pool
    pool.shutdown()


def make_samples(n: int, seed: int = 0, bad: dict[int, str] | None = None) -> list[Sample | Quarantined]:
    """``n`` items; ``bad`` maps a seq to 'corrupt' (undecodable PNG) or 'source' (quarantined at the source)."""
    rng = np.random.default_rng(seed)
    bad = bad or {}
    out: list[Sample | Quarantined] = []
    for seq in range(n):
        item_id = f"part-{seq:04d}"
        if bad.get(seq) == "source":
            out.append(Quarantined(item_id, seq, "events.jsonl line 3: payload x.png is missing", "source"))
            continue
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        png = b"\x89PNG garbage" if bad.get(seq) == "corrupt" else encode_png(pixels)
        wav = encode_wav(rng.uniform(-0.5, 0.5, (1, 1600)).astype(np.float32), 16000)
        out.append(Sample(item_id, seq, seq / 30, frame=Frame(item_id, 0, encoded=png),
                          audio=AudioClip(item_id, 0, encoded=wav)))
    return out


def test_results_come_back_in_source_order_with_quarantine_in_place(pool: ReplicaPool) -> None:
    items = make_samples(37, bad={5: "corrupt", 11: "source", 12: "corrupt"})
    seen: list[tuple[int, str]] = []
    stats = run_stream(items, pool, lambda o, lat: seen.append((o.seq, type(o).__name__)), batch_size=4,
                       max_in_flight=3)
    assert [seq for seq, _ in seen] == list(range(37))
    kinds = dict(seen)
    assert kinds[5] == kinds[11] == kinds[12] == "Quarantined"
    assert sum(k == "Inference" for k in kinds.values()) == 34
    assert stats.items == 37 and stats.quarantined == 3 and stats.inferred == 34


def test_a_corrupt_frame_is_quarantined_with_its_id_and_reason(pool: ReplicaPool) -> None:
    outcomes: list = []
    run_stream(make_samples(6, bad={2: "corrupt"}), pool, lambda o, lat: outcomes.append(o), batch_size=3)
    bad = outcomes[2]
    assert isinstance(bad, Quarantined)
    assert bad.item_id == "part-0002" and bad.stage == "decode" and "not a decodable image" in bad.reason
    assert all(isinstance(o, Inference) for i, o in enumerate(outcomes) if i != 2)


def test_backpressure_bounds_items_between_source_and_sink(pool: ReplicaPool) -> None:
    items = make_samples(120, seed=1)
    produced = 0
    gaps: list[int] = []

    def source():
        nonlocal produced
        for item in items:
            produced += 1
            yield item

    delivered = 0

    def on_result(outcome, latency_ms):
        nonlocal delivered
        delivered += 1
        gaps.append(produced - delivered)

    batch, in_flight, queue_size = 4, 2, 8
    run_stream(source(), pool, on_result, batch_size=batch, max_in_flight=in_flight, queue_size=queue_size)
    assert delivered == 120
    # source → queue → one batch being formed → in-flight batches → the batch being delivered, plus the
    # one item the source holds while blocked on a full queue
    bound = queue_size + batch * (in_flight + 2) + 1
    assert max(gaps) <= bound, f"{max(gaps)} items between source and sink, bound {bound}"


def test_identical_inputs_hit_the_replica_cache(pool: ReplicaPool) -> None:
    first = make_samples(4, seed=7)
    again = make_samples(4, seed=7)
    for s in again:
        s.seq += 4
    outcomes: list[Inference] = []
    run_stream(first + again, pool, lambda o, lat: outcomes.append(o), batch_size=4, max_in_flight=1)
    assert [o.cached for o in outcomes[4:]] == [True] * 4
    assert [o.prediction.label for o in outcomes[:4]] == [o.prediction.label for o in outcomes[4:]]


def test_a_new_model_version_never_answers_from_the_old_ones_cache(model_dir, tmp_path) -> None:
    from model.config import InspectorConfig
    from model.factory_model import FactoryInspector
    from pipelines.replicas import ModelReplica

    FactoryInspector(InspectorConfig(version="factory-inspector-test-2")).save_pretrained(tmp_path / "v2")
    replica = ModelReplica(str(model_dir), line="factory")
    items = make_samples(3, seed=7)
    replica.infer(items)
    assert all(o.cached for o in replica.infer(items))
    assert replica.load(str(tmp_path / "v2")) == "factory-inspector-test-2"
    again = replica.infer(items)
    assert not any(o.cached for o in again)
    assert {o.prediction.model_version for o in again} == {"factory-inspector-test-2"}


def test_asking_for_more_gpus_than_the_cluster_has_fails_fast(ray_cluster, model_dir) -> None:
    """On this CPU-only cluster a GPU share can never be placed: a PlacementError at once, no actor waiting."""
    import ray

    from pipelines.replicas import PlacementError

    gpus = ray.cluster_resources().get("GPU", 0)
    with pytest.raises(PlacementError, match=r"cannot be placed: the cluster has"):
        ReplicaPool(str(model_dir), replicas=int(gpus) + 1, gpus_per_replica=1)


def test_two_replicas_share_one_gpu(ray_cluster, model_dir) -> None:
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("no GPU in this Ray cluster (the test runs where one exists)")
    pool = ReplicaPool(str(model_dir), replicas=2)
    try:
        assert [p["device"] for p in pool.placement] == ["cuda", "cuda"]
        assert pool.placement[0]["gpu_ids"] == pool.placement[1]["gpu_ids"]
    finally:
        pool.shutdown()
