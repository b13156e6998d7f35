"""Scale-out: thread budgets, model selection on a Dask cluster, DDP training.

* Thread budgets (``skaudio_confit._threads``): torch's intra-op pool follows the
  worker a fit runs in, and is restored afterwards.
* Dask: ``GridSearchCV`` and ``cross_val_score`` over a real ``LocalCluster`` (two
  worker processes, one thread each) through joblib's "dask" backend give exactly the
  scores of the same search run sequentially, and a fit inside a worker runs torch on
  the worker's one thread.
* torch.distributed: two processes (gloo on 127.0.0.1) fit one estimator together
  through ``DistributedDataParallel``. One step on batches A (rank 0) and B (rank 1)
  must equal one single-process step on the averaged gradients of A and B, and the
  ranks must end with identical weights.

Everything uses the tiny random Whisper encoder from conftest and a dozen short clips.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading

import joblib
import numpy as np
import pytest
import torch
from conftest import make_class_sines
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline

from skaudio_confit import FineTuneClassifier, PairTuneTransformer
from skaudio_confit._threads import thread_budget, torch_threads

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# One training step per epoch and rank: 12 clips of 3 classes, batches of 6.
# layer=-1: every encoder parameter gets a gradient, which the DDP tests compare.
FAST = {"epochs": 1, "batch_size": 6, "learning_rate": 1e-3, "layer": -1, "random_state": 0,
        "verbose": 0, "device": "cpu"}
PAIRTUNE = {**FAST, "samples_per_class": 2, "projection_dim": 16}


# --------------------------------------------------------------------------------------
# Thread budgets
# --------------------------------------------------------------------------------------


def test_no_budget_outside_workers():
    assert thread_budget() is None
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
        with torch_threads(2):  # nested (inference inside a fit's validation)
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"), torch_threads(0):
        pass


def test_torch_threads_in_concurrent_threads():
    # Two fits in threads of one process (a Dask worker with 2 threads): each runs on
    # the budget and restores its count after; the main thread's is untouched.
    before = torch.get_num_threads()
    inside, after = [], []
    entered = threading.Barrier(2, timeout=30)

    def fit_like(n):
        start = torch.get_num_threads()
        with torch_threads(n):
            entered.wait()
            inside.append(torch.get_num_threads() == n)
            entered.wait()
        after.append(torch.get_num_threads() == start)

    workers = [threading.Thread(target=fit_like, args=(2,), daemon=True) for _ in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert inside == [True, True] and after == [True, True]
    assert torch.get_num_threads() == before


def _budget_in_loky_worker():
    from skaudio_confit._threads import thread_budget

    return thread_budget()


def test_budget_in_loky_worker_follows_joblib():
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
        budgets = joblib.Parallel(n_jobs=2)(
            joblib.delayed(_budget_in_loky_worker)() for _ in range(2)
        )
    assert budgets == [1, 1]


def _record_threads(monkeypatch):
    """Record torch's thread count at every training step and inference batch."""
    import skaudio_confit._inference as inference
    import skaudio_confit._pooling as pooling
    import skaudio_confit._training as training

    seen = {"fit": [], "transform": []}

    def recorder(key, masked_mean):
        def wrapped(*args, **kwargs):
            seen[key].append(torch.get_num_threads())
            return masked_mean(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(training, "masked_mean", recorder("fit", training.masked_mean))
    monkeypatch.setattr(pooling, "masked_mean", recorder("transform", pooling.masked_mean))
    monkeypatch.setattr(inference, "masked_mean",
                        recorder("transform", inference.masked_mean))
    return seen


def test_main_process_fit_with_n_threads_none_leaves_torch_alone(tiny_whisper_encoder_dir,
                                                                   monkeypatch):
    from skaudio_confit import _threads

    X, y = make_class_sines(n_per_class=4)
    seen = _record_threads(monkeypatch)
    # An idle machine with 4 usable cores: inference under None may follow the load,
    # but never above the user's setting.
    monkeypatch.setattr(_threads, "_runnable_elsewhere", lambda: 0)
    monkeypatch.setattr(_threads, "_usable_cores", lambda: 4)
    with torch_threads(2):  # what the user set
        PairTuneTransformer(tiny_whisper_encoder_dir, n_threads=None,
                            **PAIRTUNE).fit(X, y).transform(X)
        assert torch.get_num_threads() == 2
    assert set(seen["fit"]) == {2} and set(seen["transform"]) == {2}


def test_fitted_encoder_keeps_no_gradients(tiny_whisper_encoder_dir):
    X, y = make_class_sines(n_per_class=4)
    model = FineTuneClassifier(tiny_whisper_encoder_dir, **FAST).fit(X, y)
    assert all(p.grad is None for p in model.backbone_.parameters())


# --------------------------------------------------------------------------------------
# Dask: a real LocalCluster of two single-threaded worker processes
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        host="127.0.0.1",
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def _pipeline(backbone_dir):
    return Pipeline([
        ("pairtune", PairTuneTransformer(backbone_dir, **PAIRTUNE)),
        ("clf", LogisticRegression(max_iter=500)),
    ])


def test_grid_search_on_dask_equals_sequential(dask_client, tiny_whisper_encoder_dir):
    X, y = make_class_sines(n_per_class=4, seed=2)
    grid = {"pairtune__learning_rate": [1e-4, 1e-3], "clf__C": [0.1, 10.0]}

    def search():
        return GridSearchCV(_pipeline(tiny_whisper_encoder_dir), grid, cv=2, n_jobs=-1,
                            error_score="raise")

    with joblib.parallel_backend("dask"):
        on_dask = search().fit(X, y)
    # Both workers took part.
    assert all(n > 0 for n in dask_client.run(_n_tasks_run).values())
    sequential = search().set_params(n_jobs=1).fit(X, y)
    for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(on_dask.cv_results_[key], sequential.cv_results_[key])
    assert on_dask.best_params_ == sequential.best_params_
    np.testing.assert_array_equal(on_dask.predict_proba(X), sequential.predict_proba(X))


def _n_tasks_run(dask_worker):
    return dask_worker.state.executed_count


def test_cross_val_score_on_dask_equals_sequential(dask_client, tiny_whisper_encoder_dir):
    X, y = make_class_sines(n_per_class=4, seed=3)
    cv = KFold(3, shuffle=True, random_state=0)
    with joblib.parallel_backend("dask"):
        on_dask = cross_val_score(_pipeline(tiny_whisper_encoder_dir), X, y, cv=cv, n_jobs=-1)
    sequential = cross_val_score(_pipeline(tiny_whisper_encoder_dir), X, y, cv=cv)
    np.testing.assert_array_equal(on_dask, sequential)


def _fit_in_worker(backbone_dir):
    """Runs in a Dask worker: torch threads seen during fit and transform, and after."""
    import pytest

    torch.set_num_threads(3)  # as if a library had raised it in this worker
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = _record_threads(monkeypatch)
        X, y = make_class_sines(n_per_class=4)
        model = PairTuneTransformer(backbone_dir, **PAIRTUNE).fit(X, y)
        model.transform(X)
    return {"budget_outside_fit": thread_budget(), "fit": sorted(set(seen["fit"])),
            "transform": sorted(set(seen["transform"])), "after": torch.get_num_threads()}


def test_fit_in_dask_worker_uses_the_worker_thread_budget(dask_client,
                                                          tiny_whisper_encoder_dir):
    main_threads = torch.get_num_threads()
    report = dask_client.submit(_fit_in_worker, str(tiny_whisper_encoder_dir),
                                pure=False).result()
    assert report == {"budget_outside_fit": 1, "fit": [1], "transform": [1], "after": 3}
    assert torch.get_num_threads() == main_threads


# --------------------------------------------------------------------------------------
# torch.distributed: DistributedDataParallel over two gloo processes
# --------------------------------------------------------------------------------------


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _step_grads(optimizer):
    """The gradients an optimiser step is about to apply, per parameter group."""
    return [[p.grad.detach().clone() for p in group["params"]]
            for group in optimizer.param_groups]


def _history(model):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in model.history_]


def _ddp_rank(rank, world_size, port, backbone_dir, out_dir):
    """One rank: fit the same estimators on the same data, save what it ends with."""
    import torch.distributed as dist
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    torch.set_num_threads(1)
    # The gradients of the last optimiser step (one step per fit below): the
    # encoder's parameter group first, then the head's.
    last_step = {}
    register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: last_step.update(grads=_step_grads(optimizer))
    )
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=180))
    try:
        X, y = make_class_sines(n_per_class=4)
        results = {}
        # One step: rank 0 runs batch A, rank 1 batch B of the common 2-batch plan.
        pair = PairTuneTransformer(backbone_dir, **PAIRTUNE).fit(X, y)
        results["pairtune"] = {"state": _state(pair.backbone_), "grads": last_step["grads"],
                               "history": _history(pair)}
        fine = FineTuneClassifier(backbone_dir, **FAST).fit(X, y)
        results["finetune"] = {"state": _state(fine.backbone_), "grads": last_step["grads"],
                               "coef": fine.coef_, "intercept": fine.intercept_,
                               "history": _history(fine)}
        # Several epochs of an odd number of batches (3: rank 1 wraps around to A),
        # random_state=None (rank 0's seeds hold), a validation split and early
        # stopping (rank 0 scores and decides).
        X3, y3 = make_class_sines(n_per_class=8, seed=1)
        many = PairTuneTransformer(
            backbone_dir, **{**PAIRTUNE, "epochs": 3, "random_state": None},
            validation_fraction=0.25, n_iter_no_change=1,
        ).fit(X3, y3)
        results["many"] = {"state": _state(many.backbone_), "history": _history(many),
                           "embedding": many.transform(X3[:3])}
        # Different labels, or batch size, on one rank: every rank raises, none hangs.
        results["mismatch"] = []
        for params, labels in [(PAIRTUNE, y if rank == 0 else y[::-1]),
                               ({**PAIRTUNE, "batch_size": 6 if rank == 0 else 4}, y)]:
            try:
                PairTuneTransformer(backbone_dir, **params).fit(X, labels)
            except ValueError as exc:
                results["mismatch"].append(str(exc))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tiny_whisper_encoder_dir, tmp_path_factory):
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_rank, args=(2, _free_port(), str(tiny_whisper_encoder_dir), str(out_dir)),
             nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _reference_step(backbone_dir, make_objective, batch_plan):
    """One single-process step on the mean of the gradients of batches A and B.

    Built from the library's parts but not its training loop: same pretrained
    weights, seeds, head initialisation and batch plan as the fit, each batch's loss
    halved and backpropagated (gradients add up to their mean), one AdamW step.
    The tiny encoder has no dropout, so each batch's forward is deterministic.
    """
    from skaudio_confit._labels import encode_labels
    from skaudio_confit._pooling import masked_mean
    from skaudio_confit._random import seeds_from
    from skaudio_confit.backbones import load_backbone
    from skaudio_confit.backbones._base import batch_to

    X, y = make_class_sines(n_per_class=4)
    _, codes = encode_labels(y)
    backbone = load_backbone(backbone_dir)
    objective = make_objective(backbone)
    seed, rng = seeds_from(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in objective.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
    batches = batch_plan(codes, rng)
    assert len(batches) == 2
    params = [p for p in backbone.parameters() if p.requires_grad]
    head = (objective.param_groups() if hasattr(objective, "param_groups")
            else [{"params": list(objective.parameters())}])
    optimizer = torch.optim.AdamW([{"params": params}, *head], lr=1e-3, weight_decay=0.0)
    backbone.train()
    objective.train()
    optimizer.zero_grad()
    losses, grads_a = [], None
    for idx in batches:
        batch = batch_to(backbone.featurize([X[i] for i in idx]), torch.device("cpu"))
        hidden, mask = backbone(batch, -1)
        loss, _ = objective(masked_mean(hidden.float(), mask), torch.as_tensor(codes[idx]))
        (loss / len(batches)).backward()
        losses.append(loss.item())
        if grads_a is None:  # batch A's own gradients
            grads_a = [[2 * g for g in group] for group in _step_grads(optimizer)]
    grads = _step_grads(optimizer)
    optimizer.step()
    return {"state": _state(backbone), "grads": grads, "grads_a": grads_a,
            "loss": float(np.mean(losses)), "objective": objective}


def _assert_close_grads(actual, expected):
    assert [len(g) for g in actual] == [len(g) for g in expected]
    for group_actual, group_expected in zip(actual, expected):
        for a, e in zip(group_actual, group_expected):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)


def _assert_close_dicts(actual, expected, **tol):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], msg=key, **tol)


def _assert_equal_dicts(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", ["pairtune", "finetune", "many"])
def test_ddp_ranks_end_with_identical_weights(ddp_results, name):
    rank0, rank1 = (r[name] for r in ddp_results)
    _assert_equal_dicts(rank0["state"], rank1["state"])
    assert rank0["history"] == rank1["history"]
    assert all(torch.isfinite(v).all() for v in rank0["state"].values())
    if "grads" in rank0:  # the same averaged gradients reached both ranks
        for g0, g1 in zip(rank0["grads"], rank1["grads"]):
            assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_ddp_pairtune_step_equals_averaged_gradients(ddp_results, tiny_whisper_encoder_dir):
    from skaudio_confit._objectives import SupConObjective
    from skaudio_confit._sampling import class_balanced_batches

    reference = _reference_step(
        tiny_whisper_encoder_dir,
        lambda backbone: SupConObjective(backbone.hidden_size, 16, 0.1),
        lambda codes, rng: class_balanced_batches(codes, 6, 2, rng),
    )
    ddp = ddp_results[0]["pairtune"]
    _assert_close_grads(ddp["grads"], reference["grads"])
    _assert_close_dicts(ddp["state"], reference["state"], rtol=0, atol=1e-6)
    # The gradients are the average over both ranks' batches, not one rank's own.
    assert not torch.allclose(ddp["grads"][0][-1], reference["grads_a"][0][-1], atol=1e-6)
    assert ddp["history"][0]["batches"] == 2
    assert ddp["history"][0]["loss"] == pytest.approx(reference["loss"], rel=1e-5)


def test_ddp_finetune_step_equals_averaged_gradients(ddp_results, tiny_whisper_encoder_dir):
    from skaudio_confit._objectives import CrossEntropyObjective
    from skaudio_confit._training import shuffled_batches

    reference = _reference_step(
        tiny_whisper_encoder_dir,
        lambda backbone: CrossEntropyObjective(backbone.hidden_size, 3),
        lambda codes, rng: shuffled_batches(len(codes), 6)(rng),
    )
    ddp = ddp_results[0]["finetune"]
    _assert_close_grads(ddp["grads"], reference["grads"])
    _assert_close_dicts(ddp["state"], reference["state"], rtol=0, atol=1e-6)
    head = reference["objective"].head
    np.testing.assert_allclose(ddp["coef"], head.weight.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(ddp["intercept"], head.bias.detach().numpy(), atol=1e-6)
    assert ddp["history"][0]["loss"] == pytest.approx(reference["loss"], rel=1e-5)


def test_ddp_uneven_plan_validation_and_seed_sharing(ddp_results):
    rank0, rank1 = (r["many"] for r in ddp_results)
    history = rank0["history"]
    assert 1 <= len(history) <= 3
    assert all(r["batches"] == 3 for r in history)
    assert all("valid_accuracy" in r for r in history)
    np.testing.assert_array_equal(rank0["embedding"], rank1["embedding"])


def test_ddp_mismatched_data_raises_on_every_rank(ddp_results):
    for result in ddp_results:
        assert len(result["mismatch"]) == 2
        assert all("same clips" in message for message in result["mismatch"])
