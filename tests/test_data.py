import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from dgrn.data import SpikeData, WindowDataset, atomic_write, block_split
from dgrn.data.windows import EpochShuffleSampler


def make(t=100, n=6, **kw):
    gen = torch.Generator().manual_seed(0)
    return SpikeData((torch.rand(t, n, generator=gen) < 0.3).to(torch.uint8), 0.01, **kw)


@pytest.mark.parametrize(
    "spikes, message",
    [
        (np.full((5, 3), np.nan), "NaN"),
        (-np.ones((5, 3)), "negative"),
        (np.zeros((2, 3, 4)), "shape \\(T, N\\)"),
        (np.zeros(7), "shape \\(T, N\\)"),
        (np.zeros((0, 3)), "empty"),
        (np.full((4, 2), 0.5), "non-integer"),
    ],
)
def test_bad_spikes_are_refused(spikes, message):
    with pytest.raises(ValueError, match=message):
        SpikeData(spikes, 0.01)


def test_bad_dt_and_ground_truth_are_refused():
    with pytest.raises(ValueError, match="dt"):
        SpikeData(np.zeros((3, 2)), 0.0)
    with pytest.raises(ValueError, match="square"):
        SpikeData(np.zeros((3, 2)), 0.01, true_couplings=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="pass `observed`"):
        SpikeData(np.zeros((3, 2)), 0.01, true_couplings=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="repeated"):
        SpikeData(np.zeros((3, 2)), 0.01, true_couplings=np.zeros((4, 4)), observed=[1, 1])


def test_counts_keep_their_values():
    d = SpikeData(np.array([[0, 3], [300, 1]]), 0.01)
    assert d.spikes.dtype == torch.int32 and d.spikes.max() == 300


def test_subsample_excitatory_population_draws_from_the_excitatory_neurons_only():
    data = SpikeData(spikes=torch.randint(0, 2, (50, 20)), dt=0.005, true_communities=torch.arange(20) // 4,
                     meta={"n_exc": 16})
    for strategy in ("random", "block"):
        sub = data.subsample(0.5, seed=3, strategy=strategy, population="excitatory")
        assert sub.n_neurons == 8 and (sub.observed < 16).all()
        torch.testing.assert_close(sub.spikes, data.spikes[:, sub.observed])
        assert sub.meta["subsample"]["population"] == "excitatory"
        assert sub.meta["subsample"]["parent_n_neurons"] == 20
    assert (data.subsample(1.0, population="excitatory").observed == torch.arange(16)).all()
    with pytest.raises(ValueError, match="n_exc"):
        SpikeData(spikes=torch.zeros(5, 4), dt=0.01).subsample(0.5, population="excitatory")
    with pytest.raises(ValueError, match="unknown population"):
        data.subsample(0.5, population="inhibitory")


def test_subsample_keeps_ground_truth_and_maps_columns():
    w = torch.randn(10, 10)
    full = make(n=10, true_couplings=w, true_communities=torch.arange(10) % 3)
    sub = full.subsample(0.5, seed=3)
    assert sub.n_neurons == 5 and sub.n_network == 10
    assert torch.equal(sub.true_couplings, full.true_couplings)
    # column k of the subsample is network neuron observed[k]
    assert torch.equal(sub.spikes, full.spikes[:, sub.observed])
    assert torch.equal(sub.observed_couplings(), w[sub.observed][:, sub.observed])
    # subsampling twice composes: indices still refer to the network
    subsub = sub.subsample(0.6, seed=1)
    assert set(subsub.observed.tolist()) <= set(sub.observed.tolist())
    assert torch.equal(subsub.spikes, full.spikes[:, subsub.observed])
    assert torch.equal(full.subsample(0.5, seed=3).observed, sub.observed)  # seeded
    with pytest.raises(ValueError, match="fraction"):
        full.subsample(0.0)


def test_save_load_roundtrip(tmp_path):
    d = make(true_couplings=torch.randn(6, 6), true_communities=torch.tensor([0, 0, 1, 1, 2, 2]), meta={"a": [1, 2]})
    d = d.subsample(0.5, seed=1)
    path = d.save(tmp_path / "d.npz")
    e = SpikeData.load(path)
    assert torch.equal(e.spikes, d.spikes) and torch.equal(e.observed, d.observed)
    assert torch.equal(e.true_couplings, d.true_couplings) and torch.equal(e.true_communities, d.true_communities)
    assert e.dt == d.dt and e.meta == d.meta


def test_save_is_atomic(tmp_path, monkeypatch):
    d = make()
    target = tmp_path / "d.npz"

    def explode(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", explode)
    with pytest.raises(OSError, match="disk full"):
        d.save(target)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary is left behind


def test_load_refuses_pickles_and_garbage(tmp_path):
    pickled = tmp_path / "p.npz"
    np.savez(pickled, spikes=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        SpikeData.load(pickled)
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt|not a readable"):
        SpikeData.load(garbage)
    with pytest.raises(FileNotFoundError):
        SpikeData.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="reads .npz files.*load_recording"):
        SpikeData.load(garbage.rename(tmp_path / "g.nwb"))


def test_load_needs_the_bin_width(tmp_path):
    """A file without ``dt`` is refused unless ``dt`` is given (no bin width is assumed); ``data=file`` passes its
    ``dt`` through; a file that records ``dt`` keeps it and refuses another."""
    from conftest import compose

    from dgrn.datasets import build_dataset

    plain = tmp_path / "plain.npz"
    np.savez(plain, spikes=np.ones((4, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="does not record its bin width: give dt"):
        SpikeData.load(plain)
    assert SpikeData.load(plain, dt=0.02).dt == 0.02
    assert build_dataset("file", path=str(plain), dt=0.005).dt == 0.005
    with pytest.raises(ValueError, match="give dt"):
        build_dataset("file", path=str(plain))
    saved = make().save(tmp_path / "saved.npz")
    assert SpikeData.load(saved).dt == 0.01 and SpikeData.load(saved, dt=0.01).dt == 0.01
    with pytest.raises(ValueError, match="cannot rebin"):
        SpikeData.load(saved, dt=0.02)
    cfg = compose("train", ["data=file", f"data.dataset.path={plain}", "data.dataset.dt=0.005"], tmp_path / "run")
    assert cfg.data.dataset.dt == 0.005
    assert compose("train", ["data=file", f"data.dataset.path={plain}"], tmp_path / "run").data.dataset.dt is None


def test_atomic_write_syncs_the_file_then_its_directory_and_leaves_the_umask_alone(tmp_path):
    """fsync of the temporary's data before the rename and of the directory after it; the process umask is never
    read or changed (``os.umask`` raises here); the file gets what a plain ``open(path, "w")`` gives."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    def umask(*args):
        raise AssertionError("atomic_write touched the process umask")

    previous = os.umask(0o027)  # an unusual umask, so that the default 0o022 cannot pass by chance
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "fsync", fsync)
            mp.setattr(os, "replace", replace)
            mp.setattr(os, "umask", umask)
            text = atomic_write(tmp_path / "out" / "readouts.json", lambda tmp: Path(tmp).write_text('{"a": 1}\n'))
            figure = atomic_write(tmp_path / "out" / "fig.png", lambda tmp: Path(tmp).write_bytes(b"\x89PNG"))
        with open(tmp_path / "plain.json", "w"):
            pass
    finally:
        os.umask(previous)
    assert text.read_text() == '{"a": 1}\n' and figure.read_bytes() == b"\x89PNG"
    folder = (tmp_path / "out").stat().st_ino
    assert events == [("fsync", text.stat().st_ino, False), ("replace", "readouts.json"), ("fsync", folder, True),
                      ("fsync", figure.stat().st_ino, False), ("replace", "fig.png"), ("fsync", folder, True)]
    plain_mode = stat.S_IMODE((tmp_path / "plain.json").stat().st_mode)
    assert plain_mode == 0o640
    assert stat.S_IMODE(text.stat().st_mode) == stat.S_IMODE(figure.stat().st_mode) == plain_mode


def test_atomic_write_of_text_bytes_and_a_failed_write(tmp_path):
    """Text and bytes are written as given; a write that raises leaves the old file as it was, and no temporary."""
    path = tmp_path / "metrics.json"
    assert atomic_write(path, b"\x00\xff").read_bytes() == b"\x00\xff"
    atomic_write(path, "old")

    def half(tmp):
        Path(tmp).write_text("new, half writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]  # no temporary left behind
    with pytest.raises(TypeError, match="str, bytes or a write"):
        atomic_write(path, {"a": 1})
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_block_split_partitions_time_without_overlap():
    splits = block_split(1000, 0.15, 0.15, n_blocks=20, seed=1)
    covered = np.zeros(1000, dtype=int)
    for segs in splits.values():
        for a, b in segs:
            covered[a:b] += 1
    assert (covered == 1).all()
    sizes = {k: sum(b - a for a, b in v) for k, v in splits.items()}
    assert sizes == {"train": 700, "val": 150, "test": 150}
    assert block_split(1000, 0.15, 0.15, n_blocks=20, seed=1) == splits
    with pytest.raises(ValueError, match="too few"):
        block_split(100, 0.3, 0.3, n_blocks=2)


def test_windows_stay_inside_their_split():
    spikes = torch.arange(100)[:, None].repeat(1, 2)  # bin index as the value
    splits = block_split(100, 0.2, 0.2, n_blocks=10, seed=0)
    for segs in splits.values():
        ds = WindowDataset(spikes, segs, window=6, stride=5, binarize=False)
        for i in range(len(ds)):
            w = ds[i][:, 0]
            assert any(a <= w[0] and w[-1] < b for a, b in segs)
            assert torch.equal(w, w[0] + torch.arange(6.0))
    # stride = window - context scores every bin after the first `context` of a segment exactly once
    ds = WindowDataset(spikes, [(0, 51)], window=11, stride=10, binarize=False)
    targets = torch.cat([ds[i][1:, 0] for i in range(len(ds))])
    assert torch.equal(targets, torch.arange(1, 51.0))
    with pytest.raises(ValueError, match="no window"):
        WindowDataset(spikes, [(0, 5)], window=6)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=1), EpochShuffleSampler(50, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(4)
    assert list(a) != list(b)
