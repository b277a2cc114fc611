"""The commands of ``lightning-tt`` that are not Lightning loops, as typed functions.

lightning_tt.cli builds their parser with jsonargparse from these signatures and docstrings: every
parameter is an option of the same name (``--seed_item``), a dataclass parameter is a group of options
(``--split.test_days``, ``--index.nprobe``), a ``Literal`` lists its choices in ``--help``, and a wrong
value is refused naming its option. Each function does the work and prints what a user needs to see;
errors in what the user gave are lightning_tt.errors.InputError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning_tt.data.prepare import SplitConfig
from lightning_tt.errors import InputError
from lightning_tt.eval.index import IndexConfig


def synth(out: Path, rows: int = 200_000, users: int = 1_000, items: int = 20_000, seed: int = 0,
          days: float = 301.0, size: str | None = None, row_group_size: int = 1_000_000,
          overwrite: bool = False) -> None:
    """Write a synthetic dataset in the Yambda layout.

    Args:
        out: output directory (written atomically)
        rows: number of event rows
        users: number of users
        items: number of tracks
        seed: random seed
        days: time span in days (Yambda: 301)
        size: size label of flat/<size>/ (default: from rows, e.g. 200k)
        row_group_size: rows per parquet row group
        overwrite: replace an existing output directory
    """
    from lightning_tt.data.synth import synthesize

    path = synthesize(out, rows=rows, users=users, items=items, seed=seed, size=size, days=days,
                      row_group_size=row_group_size, overwrite=overwrite)
    print(f"wrote {path}")


def download(size: Literal["50m", "500m", "5b"], out: Path, revision: str | None = None) -> None:
    """Fetch one Yambda size from the Hugging Face hub.

    Args:
        size: which size of the dataset
        out: output directory (the Yambda layout)
        revision: dataset revision (branch, tag or commit)
    """
    from lightning_tt.data.download import download as fetch

    print(f"downloaded Yambda {size} into {fetch(size, out, revision=revision)}")


def prepare(raw: Path, out: Path, size: str | None = None, split: SplitConfig = SplitConfig(),  # noqa: B008
            audio_dim: int = 128,
            overwrite: bool = False) -> None:
    """Raw parquet -> prepared arrays + meta.json.

    Args:
        raw: directory in the Yambda layout
        out: output directory (written atomically)
        size: which flat/<size>/ to use (default: the only one)
        split: the global temporal split and the positives
        audio_dim: expected audio embedding dimension (Yambda: 128)
        overwrite: replace an existing output directory
    """
    from lightning_tt.data.prepare import prepare as run

    meta = run(raw, out, size=size, config=split, audio_dim=audio_dim, overwrite=overwrite)
    c = meta["counts"]
    print(f"prepared {out}: {c['train_examples']:,} train examples, {c['val_examples']:,} val cases, "
          f"{c['test_examples']:,} test cases in {meta['seconds']:.1f} s; dropped "
          f"{c['duplicate_events_dropped']:,} exact duplicate events")


def describe(data: Path, batch_size: int = 4) -> None:
    """Print the splits and a sample batch of a prepared dataset.

    Args:
        data: a prepared directory
        batch_size: examples in the sample batch
    """
    from lightning_tt.data.summary import summarize

    print(summarize(str(data), batch_size=batch_size))


def baselines(data: Path, split: Literal["val", "test"] = "test", k: int | list[int] = [10, 50, 100, 200],  # noqa: B006
              only: str | list[str] | None = None, tune: bool = False, tune_metric: str = "val/next/recall@100",
              out: Path = Path("runs/baselines/metrics.json"), overwrite: bool = False) -> None:
    """Evaluate the baselines on a prepared split.

    Random, MostPop, DecayPop, Transitions, ItemKNN, iALS, BPR and SASRec, on the same cases and metrics
    as the model.

    Args:
        data: a prepared directory
        split: the window to report
        k: cut-offs: one, or a list such as [10,100]
        only: baseline names to run: one, or a list such as [MostPop,iALS] (default: all)
        tune: choose each baseline's hyperparameters on the validation window (grids in
            lightning_tt/baselines/models.py), then report the test window with them
        tune_metric: the validation metric tune maximises
        out: where metrics.json goes; every case's values go beside it, to ``{out's stem}_cases.parquet``
            (lightning_tt.eval.metrics.case_table: for intervals, lightning_tt.eval.intervals)
        overwrite: replace existing out files
    """
    import pyarrow as pa

    from lightning_tt.baselines import evaluate
    from lightning_tt.baselines import tune as tune_baselines
    from lightning_tt.data.prepared import PreparedData
    from lightning_tt.eval.metrics import case_table, comparison_columns, write_case_table
    from lightning_tt.eval.table import print_table
    from lightning_tt.outputs import Output
    from lightning_tt.runs import write_json

    if tune and split != "test":
        raise InputError("--tune chooses on the validation window and reports the test window: drop --split val")
    output = Output(out, "file", inputs={"--data": data}, overwrite=overwrite)  # checked before the work
    cases_output = Output(out.with_name(f"{out.stem}_cases.parquet"), "file", option="--out",
                          inputs={"--data": data}, overwrite=overwrite)
    ks = sorted([k] if isinstance(k, int) else k)
    only = [only] if isinstance(only, str) else only
    cases: dict = {}
    if tune:
        results = tune_baselines(str(data), ks, only, tune_metric, cases=cases)
    else:
        results = evaluate(str(data), split, ks, only, cases=cases)
    write_json(output, results)
    user_ids = PreparedData(data)["user_ids"]
    write_case_table(cases_output, pa.concat_tables([case_table(kept, ks, user_ids, name, split)
                                                     for name, kept in cases.items()]))
    if tune:
        print(f"chosen on the validation window by {tune_metric}; the test window:")
    print_table(results, split, comparison_columns(ks), params=True)
    print(f"metrics written to {output.path}, every case's values to {cases_output.path}")


def sweep(sweep_file: Path, trials: int = 20, storage: str | None = None, out: Path | None = None, seed: int = 0,
          study_name: str | None = None, fit_flags: list[str] | None = None) -> None:
    """Run a W&B sweep file offline with Optuna (no W&B server); flags after -- go to every trial's fit.

    Args:
        sweep_file: a W&B sweep file, e.g. sweeps/two-tower-bayes.yaml
        trials: finished (complete or pruned) trials the study should reach
        storage: Optuna storage URL (default sqlite:///OUT/study.db)
        out: leaderboard, figure and best.yaml (default runs/sweeps/NAME)
        seed: the sampler's seed
        study_name: default: the sweep file's name without .yaml
        fit_flags: set from what follows -- on the command line
    """
    from lightning_tt.sweep import run_sweep

    found = run_sweep(str(sweep_file), trials, storage, str(out) if out else None, fit_flags, seed, study_name)
    print((found / "best.yaml").read_text() if (found / "best.yaml").is_file() else "no trial completed")
    print(f"leaderboard: {found / 'leaderboard.csv'}; figure: {found / 'metric_vs_params.png'}; train with the "
          f"best: lightning-tt fit <the sweep's --config> --config {found / 'best.yaml'}")


def export(ckpt_path: Path, out: Path, index: IndexConfig = IndexConfig(), overwrite: bool = False  # noqa: B008
           ) -> None:
    """Write item embeddings, the Faiss index and the id mapping of a checkpoint.

    Args:
        ckpt_path: a checkpoint of lightning-tt fit
        out: output directory (written atomically)
        index: the Faiss index (lightning_tt/eval/index.py); options left unset are chosen from the
            catalogue's size and dim, as the training callback does
        overwrite: replace an existing export
    """
    from lightning_tt.serve import export as run

    meta = run(ckpt_path, out, index, overwrite=overwrite)
    print(f"exported {meta['items']:,} items ({meta['factory']}, nprobe {meta['nprobe']}, k_factor "
          f"{meta['k_factor']}, {meta['index_bytes'] / 2**20:.1f} MiB) to {out}")
    if meta["calibration"]:
        nprobe, k_factor, overlap = meta["calibration"][-1]
        print(f"calibrated on the validation queries: top-100 overlap {overlap:.3f} at nprobe {nprobe}, "
              f"k_factor {k_factor} (target {meta['target_overlap']})")


def recommend(index: Path, ckpt_path: Path, user: int | None = None, seed_item: int | None = None,
              batch: Path | None = None, out: Path | None = None, k: int = 10, overwrite: bool = False) -> None:
    """Top-k tracks for one user and seed track, or for a file of requests.

    Args:
        index: a directory written by lightning-tt export
        ckpt_path: the checkpoint it was exported from
        user: raw Yambda uid
        seed_item: raw Yambda item_id of the current track
        batch: a .parquet or .csv of requests (columns user, seed_item)
        out: with batch: where the top-k lists go (parquet)
        k: how many tracks
        overwrite: replace an existing out file
    """
    from lightning_tt.serve import recommend as one
    from lightning_tt.serve import recommend_batch

    if batch is not None:
        if out is None or user is not None or seed_item is not None:
            raise InputError("--batch FILE needs --out FILE and no --user or --seed_item")
        found = recommend_batch(index, ckpt_path, batch, out, k, overwrite)
        print(f"{found['requests']:,} requests ({found['unknown_users']:,} unknown users, "
              f"{found['unknown_seeds']:,} unknown seed items) at {found['queries_per_second']:,.0f} queries/s; "
              f"top {k} written to {out}")
        return
    if user is None or seed_item is None:
        raise InputError("recommend needs --user and --seed_item, or --batch FILE --out FILE")
    items, notes = one(index, ckpt_path, user, seed_item, k)
    for note in notes:
        print(f"note: {note}")
    print(f"{'rank':>4}  {'item_id':>10}  score")
    for rank, (item, score) in enumerate(items, 1):
        print(f"{rank:>4}  {item:>10}  {score:.4f}")


def serve(export: Path, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 64,
          max_wait_ms: float = 1.0, open_page: bool = False) -> None:
    """Serve an export over HTTP: POST /recommend, GET /health, /info, POST /reload, and a browse page at /.

    Args:
        export: a directory written by lightning-tt export (its export.json names the checkpoint)
        host: the address to listen on; 127.0.0.1 keeps the server on this machine
        port: the port (0: any free one, printed)
        max_batch_size: at most this many waiting requests are searched as one batch
        max_wait_ms: how long the first request of a batch waits for others
        open_page: open the browse page in this machine's web browser
    """
    from lightning_tt.server import serve as run

    run(export, host, port, max_batch_size, max_wait_ms, open_page)


def demo(workdir: Path = Path("runs/demo"), epochs: int | None = None) -> None:
    """Synthesise, prepare, train and test the embedded default, with the baselines beside it.

    Args:
        workdir: where data, logs and checkpoints go
        epochs: training epochs (default: configs/demo.yaml's)
    """
    from lightning_tt.demo import run_demo

    run_demo(workdir, epochs)


#: Subcommand -> function; ``data`` groups the dataset commands. Sweep takes its file as a positional.
COMMANDS = {"demo": demo, "baselines": baselines, "sweep": sweep, "export": export, "recommend": recommend,
            "serve": serve}
DATA_COMMANDS = {"synth": synth, "download": download, "prepare": prepare, "describe": describe}
POSITIONAL = {sweep}
