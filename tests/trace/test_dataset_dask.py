"""The same Parquet dataset on a Dask cluster (distributed.LocalCluster in this process): counts by method/status/hour
and transaction latency quantiles per method per hour identical to DuckDB's, transactions that span files and
hours kept whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import notebook_im as nim
from notebook_im.trace.capture import CaptureLimits
from support.captures import generate

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dask")
    out = root / "traces"
    # two captures (two imports: transactions cut across files), small row groups, over two hours
    for seed in (21, 22):
        cap = root / f"c{seed}.pcap"
        generate(cap, 1_500_000, seed=seed, rate=0.25)
        nim.read_pcap(cap, to=out, limits=CaptureLimits(batch_bytes=128 * 1024), owner="sbc")
    return out


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.mark.slow
def test_counts_identical_to_duckdb(dataset: Path, client) -> None:
    duck = nim.open_traces(dataset)
    dask = nim.open_traces(dataset, engine="dask", client=client)
    for by in (("method", "status", "hour"), ("transport",), ("src", "method")):
        a, b = duck.counts(by=by), dask.counts(by=by)
        pd.testing.assert_frame_equal(a, b)
    a = duck.counts(by=("method", "hour"), start="2024-05-01 08:30", end="2024-05-01 09:15")
    b = dask.counts(by=("method", "hour"), start="2024-05-01 08:30", end="2024-05-01 09:15")
    pd.testing.assert_frame_equal(a, b)
    assert a["hour"].nunique() == 2


def test_latency_quantiles_identical_to_duckdb(dataset: Path, client) -> None:
    duck = nim.open_traces(dataset)
    dask = nim.open_traces(dataset, engine="dask", client=client)
    a, b = (
        duck.latency(by=("method", "hour"), q=(0.5, 0.9, 0.99)),
        dask.latency(by=("method", "hour"), q=(0.5, 0.9, 0.99)),
    )
    assert len(a) >= 6
    pd.testing.assert_frame_equal(a, b)
    a, b = duck.latency(by="status", start="2024-05-01 09:00"), dask.latency(by="status", start="2024-05-01 09:00")
    pd.testing.assert_frame_equal(a, b)


def test_transactions_identical_to_duckdb(dataset: Path, client) -> None:
    duck = nim.open_traces(dataset).transactions()
    dask = nim.open_traces(dataset, engine="dask", client=client).transactions().compute()
    assert len(duck) == len(dask) > 1000
    d = duck.set_index(["owner", "transaction_id"]).sort_index()
    k = dask.set_index(["owner", "transaction_id"]).sort_index()
    assert (d.index == k.index).all()
    assert ((d["latency"] * 1e9).round().astype("Int64") == k["latency_ns"]).fillna(True).all()
    assert (d["status"] == k["status"]).fillna(True).all()
    assert (d["retransmissions"] == k["retransmissions"]).all()


def test_sip_is_a_lazy_dask_frame(dataset: Path, client) -> None:
    dask = nim.open_traces(dataset, engine="dask", client=client)
    ddf = dask.sip(start="2024-05-01 09:00", columns=["timestamp", "method", "status"], method="MESSAGE")
    assert type(ddf).__module__.startswith("dask")
    pdf = ddf.compute()
    assert (pdf["method"].astype(str) == "MESSAGE").all() and (
        pdf["timestamp"] >= pd.Timestamp("2024-05-01 09:00", tz="UTC")
    ).all()
    assert len(pdf) == len(nim.open_traces(dataset).sip(start="2024-05-01 09:00", method="MESSAGE", raw=False))
    with pytest.raises(ValueError, match="DuckDB settings"):
        nim.open_traces(dataset, engine="dask", threads=2)
