import numpy as np
import pytest
import torch

from dgrn.cli import main as dgrn_main
from dgrn.data import SpikeData, load_recording, write_nwb
from dgrn.datasets import SIMULATORS, build_dataset, fresh_trajectories
from dgrn.sim import kinetic_ising, lif_preset


def _spike_times(seed=0, n_units=5, n_spikes=400, t_stop=2.0):
    gen = np.random.default_rng(seed)
    return gen.uniform(0, t_stop, n_spikes), gen.integers(0, n_units, n_spikes)


# ------------------------------------------------------------------------------------------- spike times
def test_from_spike_times_bins_like_a_histogram():
    times, units = _spike_times()
    data = SpikeData.from_spike_times(times, units, 0.05, 0.0, 2.0)
    assert data.spikes.shape == (40, 5) and data.meta["unit_ids"] == [0, 1, 2, 3, 4]
    for u in range(5):
        reference, _ = np.histogram(times[units == u], bins=40, range=(0.0, 2.0))
        assert np.array_equal(data.spikes[:, u].numpy(), reference)
    # unit ids: any labels, columns in the order given; silent units get a column
    labels = np.array(["a", "b", "c", "d", "e"])[units]
    named = SpikeData.from_spike_times(times, labels, 0.05, 0.0, 2.0, unit_ids=["e", "d", "c", "b", "a", "silent"])
    assert torch.equal(named.spikes[:, :5], data.spikes.flip(1)) and named.spikes[:, 5].sum() == 0
    # a partial last bin is kept whole; t_start shifts the bins
    assert SpikeData.from_spike_times([0.0, 0.11], [0, 0], 0.05, 0.0, 0.12).spikes[:, 0].tolist() == [1, 0, 1]
    shifted = SpikeData.from_spike_times(times + 10.0, units, 0.05, 10.0, 12.0)
    assert torch.equal(shifted.spikes, data.spikes)
    assert SpikeData.from_spike_times([0.3, 0.31], [7, 7], 0.1).spikes.tolist() == [[0], [0], [0], [2]]  # t_stop inferred


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(times=[0.1, 2.5], units=[0, 0], dt=0.1, t_start=0.0, t_stop=2.0), r"outside \[t_start, t_stop\)"),
        (dict(times=[-0.1], units=[0], dt=0.1, t_start=0.0, t_stop=2.0), "outside"),
        (dict(times=[0.1], units=[0], dt=0.0, t_start=0.0, t_stop=2.0), "bin size"),
        (dict(times=[0.1], units=[0], dt=-1.0, t_start=0.0, t_stop=2.0), "bin size"),
        (dict(times=[np.nan], units=[0], dt=0.1, t_start=0.0, t_stop=2.0), "NaN"),
        (dict(times=[0.1, 0.2], units=[0], dt=0.1, t_start=0.0, t_stop=2.0), "one entry per spike"),
        (dict(times=[0.1], units=[3], dt=0.1, t_start=0.0, t_stop=2.0, unit_ids=[0, 1]), "not in unit_ids"),
        (dict(times=[0.1], units=[0], dt=0.1, t_start=1.0, t_stop=0.5), "after t_start"),
    ],
)
def test_from_spike_times_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpikeData.from_spike_times(**kwargs)


def test_spike_time_and_binned_npz(tmp_path):
    times, units = _spike_times()
    np.savez(tmp_path / "times.npz", times=times, units=units, t_start=0.0, t_stop=2.0)
    data = load_recording(tmp_path / "times.npz", 0.05)
    assert torch.equal(data.spikes, SpikeData.from_spike_times(times, units, 0.05, 0.0, 2.0).spikes)
    with pytest.raises(ValueError, match="give dt"):
        load_recording(tmp_path / "times.npz")
    binned = data.save(tmp_path / "binned.npz")
    assert torch.equal(load_recording(binned).spikes, data.spikes)
    with pytest.raises(ValueError, match="cannot rebin"):
        load_recording(binned, 0.01)
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    with pytest.raises(ValueError, match="neither"):
        load_recording(tmp_path / "other.npz", 0.05)


# --------------------------------------------------------------------------------------------------- NWB
def test_nwb_roundtrip_keeps_spikes_and_ground_truth(tmp_path):
    pytest.importorskip("pynwb")
    dense = kinetic_ising(30, 400, n_communities=3, seed=0).subsample(0.5, seed=1)
    sparse = lif_preset("tiny", 0.2, 0.005, seed=0, burn_in_s=0.0).subsample(0.25, strategy="block", seed=1)
    for data in (dense, sparse):
        back = load_recording(write_nwb(data, tmp_path / "rec.nwb"))
        assert torch.equal(back.spikes, data.spikes) and back.dt == data.dt
        assert torch.equal(back.observed, data.observed) and torch.equal(back.true_communities, data.true_communities)
        assert back.true_couplings.layout == data.true_couplings.layout
        assert torch.equal(back.observed_couplings(), data.observed_couplings())
        assert back.meta["simulator"] == data.meta["simulator"]
    # rebinned at a coarser bin size, the counts add up
    coarse = load_recording(tmp_path / "rec.nwb", dt=0.01)
    assert torch.equal(coarse.spikes, sparse.spikes.view(20, 2, -1).sum(1).to(coarse.spikes.dtype))


def test_nwb_written_by_pynwb_is_read(tmp_path):
    pynwb = pytest.importorskip("pynwb")
    import datetime

    times, units = _spike_times(n_units=4)
    nwbfile = pynwb.NWBFile(session_description="test", identifier="t1",
                            session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    for u in range(4):
        nwbfile.add_unit(spike_times=np.sort(times[units == u]), id=10 + u)
    with pynwb.NWBHDF5IO(str(tmp_path / "session.nwb"), "w") as io:
        io.write(nwbfile)
    data = load_recording(tmp_path / "session.nwb", dt=0.05)
    assert data.meta["unit_ids"] == [10, 11, 12, 13] and data.true_couplings is None
    reference = SpikeData.from_spike_times(times, units, 0.05, 0.0, data.meta["t_stop"])
    assert torch.equal(data.spikes, reference.spikes)
    two = load_recording(tmp_path / "session.nwb", 0.05, units=[12, 10], t_stop=2.0)
    assert torch.equal(two.spikes, reference.spikes[:, [2, 0]])
    with pytest.raises(ValueError, match="give dt"):
        load_recording(tmp_path / "session.nwb")
    with pytest.raises(ValueError, match="unknown unit id"):
        load_recording(tmp_path / "session.nwb", 0.05, units=[99])
    # an NWB file without a Units table
    empty = pynwb.NWBFile(session_description="no units", identifier="t2",
                          session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    with pynwb.NWBHDF5IO(str(tmp_path / "empty.nwb"), "w") as io:
        io.write(empty)
    with pytest.raises(ValueError, match="no Units table"):
        load_recording(tmp_path / "empty.nwb", 0.05)


# --------------------------------------------------------------------------------------------------- Neo
def test_neo_io_roundtrip(tmp_path):
    neo = pytest.importorskip("neo")
    import quantities as pq

    times, units = _spike_times(n_units=3)
    block = neo.Block()
    segment = neo.Segment()
    block.segments.append(segment)
    for u in range(3):
        segment.spiketrains.append(neo.SpikeTrain(np.sort(times[units == u]) * 1000.0 * pq.ms, t_start=0 * pq.s,
                                                  t_stop=2.0 * pq.s, name=f"unit{u}"))
    neo.io.NeoMatlabIO(str(tmp_path / "rec.mat")).write_block(block)
    data = load_recording(tmp_path / "rec.mat", 0.05)
    assert data.meta["unit_names"] == ["unit0", "unit1", "unit2"] and data.meta["format"] == "neo:NeoMatlabIO"
    assert torch.equal(data.spikes, SpikeData.from_spike_times(times, units, 0.05, 0.0, 2.0).spikes)
    with pytest.raises(ValueError, match="segment 3 does not exist"):
        load_recording(tmp_path / "rec.mat", 0.05, segment=3)
    (tmp_path / "rec.pkl").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle"):
        load_recording(tmp_path / "rec.pkl", 0.05)


# ------------------------------------------------------------------------------------------- subsampling
def test_subsampling_strategies_keep_the_hidden_neurons_in_the_ground_truth():
    labels = torch.arange(200) // 50  # 4 communities of 50
    w = torch.randn(200, 200)
    spikes = torch.randint(0, 2, (50, 200))
    full = SpikeData(spikes, 0.01, true_couplings=w, true_communities=labels)
    block = full.subsample(0.2, seed=3, strategy="block")
    assert block.n_neurons == 40 and torch.equal(torch.diff(block.observed), torch.ones(39, dtype=torch.long))
    for sub in (block, full.subsample(0.3, seed=1, strategy="community")):
        assert sub.n_network == 200 and torch.equal(sub.true_couplings, w)
        assert torch.equal(sub.spikes, spikes[:, sub.observed]) and torch.equal(sub.observed, sub.observed.sort().values)
    only = full.subsample(0.2, strategy="community", community_weights={2: 1.0, 0: 0.0, 1: 0.0, 3: 0.0})
    assert set(only.observed_communities().tolist()) == {2}
    # default: a seeded half of the communities weighs `bias` (4x): they hold ~4/5 of the kept neurons
    kept = torch.stack([torch.bincount(full.subsample(0.2, seed=s, strategy="community").observed_communities(),
                                       minlength=4) for s in range(20)]).double()
    top_two = kept.sort(1, descending=True).values[:, :2].sum(1) / 40
    assert 0.7 < float(top_two.mean()) < 0.9
    assert torch.equal(full.subsample(0.3, seed=5, strategy="community").observed,
                       full.subsample(0.3, seed=5, strategy="community").observed)
    with pytest.raises(ValueError, match="unknown subsampling strategy"):
        full.subsample(0.5, strategy="stripes")
    with pytest.raises(ValueError, match="true_communities"):
        SpikeData(spikes, 0.01).subsample(0.5, strategy="community")
    with pytest.raises(ValueError, match="one weight per community"):
        full.subsample(0.5, strategy="community", community_weights=[1.0, 2.0])


def test_sparse_ground_truth_save_load_and_scipy_input(tmp_path):
    import scipy.sparse as sp

    w = sp.random(30, 30, density=0.1, random_state=0, format="csr")
    data = SpikeData(torch.zeros(5, 30, dtype=torch.uint8), 0.01, true_couplings=w).subsample(0.5, seed=0)
    assert data.true_couplings.layout == torch.sparse_coo
    assert np.allclose(data.observed_couplings().numpy(), w.toarray()[np.ix_(data.observed, data.observed)])
    back = SpikeData.load(data.save(tmp_path / "s.npz"))
    assert back.true_couplings.layout == torch.sparse_coo
    assert torch.equal(back.true_couplings.to_dense(), data.true_couplings.to_dense())
    bad = sp.csr_matrix(([np.nan], ([0], [1])), shape=(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        SpikeData(torch.zeros(2, 3), 0.01, true_couplings=bad)
    with pytest.raises(ValueError, match="square"):
        SpikeData(torch.zeros(2, 3), 0.01, true_couplings=sp.csr_matrix(np.ones((3, 4))))


# ----------------------------------------------------------------------------------- datasets and the CLI
def test_named_sources_and_cli(tmp_path, capsys):
    assert {"clustered_lif", "connectome"} <= SIMULATORS and "recording" not in SIMULATORS
    cfg = {"name": "clustered_lif", "preset": "tiny", "duration_s": 0.2, "dt": 0.005, "burn_in_s": 0.05}
    a = build_dataset(**cfg)
    b = build_dataset(**fresh_trajectories(cfg, 5))
    assert torch.equal(a.true_couplings.to_dense(), b.true_couplings.to_dense()) and not torch.equal(a.spikes, b.spikes)
    a.save(tmp_path / "rec.npz")
    assert torch.equal(build_dataset("recording", path=str(tmp_path / "rec.npz")).spikes, a.spikes)
    assert dgrn_main(["simulate", "lif", "--preset", "tiny", "--duration-s", "0.2", "--dt", "0.005",
                      "--observed-fraction", "0.5", "--subsample", "community", "--out", str(tmp_path / "lif.npz")]) == 0
    lif = SpikeData.load(tmp_path / "lif.npz")
    assert lif.n_neurons == 100 and lif.n_network == 200 and lif.meta["subsample"]["strategy"] == "community"
    assert dgrn_main(["simulate", "kinetic-ising", "--t", "100", "--out", str(tmp_path / "x.txt")]) == 2
    assert ".npz or .nwb" in capsys.readouterr().err


def test_cli_writes_nwb(tmp_path):
    pytest.importorskip("pynwb")
    assert dgrn_main(["simulate", "kinetic-ising", "--n", "20", "--t", "300", "--out", str(tmp_path / "k.nwb")]) == 0
    data = load_recording(tmp_path / "k.nwb")
    assert data.spikes.shape == (300, 20) and data.true_couplings is not None


# ------------------------------------------------------------------------------------------- Aplysia (real data)
def test_aplysia_recordings_bin_like_a_histogram_of_the_files_events():
    """load_aplysia against an independent binning of the .mat events (scipy + numpy.histogram2d): every spike kept,
    one column per neuron ID (silent ones too), the stimulus bin at 30 s."""
    from scipy.io import loadmat

    from dgrn.data import aplysia_recordings, load_aplysia
    from dgrn.data.io import aplysia_dir

    names = aplysia_recordings()
    assert len(names) == 30 and names[0] == "Jun0214da01"
    for name, dt in [("Jun0214da01", 0.02), ("Jun0414Bda01", 0.05)]:
        events = loadmat(aplysia_dir() / f"{name}.mat")["spks"]
        ids, times = events[:, 0].astype(int), events[:, 1]
        rec = load_aplysia(name, dt=dt)
        n_bins = int(np.floor(times.max() / dt + 1e-9)) + 1
        counts, _, _ = np.histogram2d(times, ids, bins=[np.arange(n_bins + 1) * dt, np.arange(1, ids.max() + 2) - 0.5])
        assert rec.spikes.shape == (n_bins, ids.max()) and int(rec.spikes.sum()) == len(times)
        # histogram2d's float edges may put a spike on an edge one bin off: compare per neuron and per 1 s
        np.testing.assert_array_equal(rec.spikes.numpy().sum(0), counts.sum(0))
        per_s = int(round(1 / dt))
        usable = n_bins // per_s * per_s
        a = rec.spikes.numpy()[:usable].reshape(-1, per_s, ids.max()).sum(1)
        b = counts[:usable].reshape(-1, per_s, ids.max()).sum(1)
        assert np.abs(a - b).sum() <= 2 * len(times) * 1e-3
        assert rec.meta["stimulus_time_s"] == 30.0 and rec.meta["stimulus_bin"] == int(round(30.0 / dt))
        assert rec.meta["preparation"] + rec.meta["program"] == name and rec.dt == dt


def test_aplysia_stretches_and_bad_input(tmp_path):
    from scipy.io import savemat

    from dgrn.data import load_aplysia, read_spike_mat

    late = load_aplysia("Jun0214da01", dt=0.05, t_start=35.0, stimulus_time_s=None)
    assert late.meta["t_start"] == 35.0 and late.meta["stimulus_bin"] is None and late.n_neurons == 136
    early = load_aplysia("Jun0214da01", dt=0.05, t_stop=60.0)
    assert early.n_bins == 1200 and early.meta["stimulus_bin"] == 600
    with pytest.raises(ValueError, match="unknown Aplysia recording"):
        load_aplysia("Jun0214da09")
    with pytest.raises(ValueError, match="outside the recording"):
        load_aplysia("Jun0214da01", t_start=35.0)
    # the generic reader and load_recording's dispatch (other .mat files still go to Neo)
    savemat(tmp_path / "ev.mat", {"spks": np.array([[1, 0.01], [3, 0.25], [1, 0.26]])})
    rec = load_recording(tmp_path / "ev.mat", dt=0.1)
    assert rec.spikes.tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="give dt"):
        load_recording(tmp_path / "ev.mat")
    savemat(tmp_path / "bad.mat", {"spks": np.array([[0.5, 0.01]])})
    with pytest.raises(ValueError, match="integers from 1"):
        read_spike_mat(tmp_path / "bad.mat", 0.1)
    with pytest.raises(ValueError, match="no variable"):
        read_spike_mat(tmp_path / "ev.mat", 0.1, variable="spikes")


def test_aplysia_data_config_builds_the_datamodule():
    from dgrn.datasets import accepted_arguments

    assert "recording" in accepted_arguments("aplysia").parameters
    rec = build_dataset("aplysia", recording="Jun0514da02", dt=0.05)
    assert rec.meta["recording"] == "Jun0514da02" and "aplysia" not in SIMULATORS
