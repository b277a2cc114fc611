"""Human-readable summary of a prepared dataset: split boundaries, counts and one sample batch."""

from __future__ import annotations

import numpy as np

from lightning_tt.data.batches import NextTrackDataset, PaperListDataset
from lightning_tt.data.prepared import PreparedData
from lightning_tt.data.schema import DAY
from lightning_tt.errors import InputError


def _when(seconds: int) -> str:
    return f"{seconds:>11,d} s (day {seconds / DAY:7.2f})"


def summarize(data_dir: str, batch_size: int = 4, history: int | None = None) -> str:
    """A multi-line report: sources, vocabulary sizes, split windows and counts, a sample batch."""
    if batch_size < 1:
        raise InputError(f"--batch_size must be >= 1, got {batch_size}")
    data = PreparedData(data_dir)
    b, c, v = data.boundaries, data.counts, data.vocab
    history = history or data.default_history
    lines = [
        f"prepared dataset {data.path}",
        f"  source: {data.meta['source']['raw_dir']} (size {data.meta['source']['size']}), "
        f"{c['raw_rows']:,} raw rows ({c['duplicate_events_dropped']:,} exact duplicates dropped), "
        f"{c['stream_listens']:,} listens in the stream, "
        f"{c['signals']:,} other events, {c['users_dropped_no_train_history']:,} users without training history "
        f"dropped",
        f"  vocab: {v['num_users']:,} users, {v['num_items']:,} items, {v['num_artists']:,} artists, "
        f"{v['num_albums']:,} albums (incl. padding and unknown), audio dim {v['audio_dim']}, "
        f"{c['items_with_audio']:,} items with audio",
        "  splits (Listen+ = played_ratio_pct >= {}):".format(data.meta["config"]["min_played_pct"]),
        f"    train  [{_when(b['min_timestamp'])}, {_when(b['train_end'])})  {c['train_examples']:>12,d} examples",
        f"    val    [{_when(b['val_start'])}, {_when(b['val_end'])})  {c['val_examples']:>12,d} cases, "
        f"{c['paper_val_users']:,} paper lists",
        f"    test   [{_when(b['test_start'])}, {_when(b['test_end'])}]  {c['test_examples']:>12,d} cases, "
        f"{c['paper_test_users']:,} paper lists",
    ]
    for name, dataset in (("train", NextTrackDataset(data, "train", history)),
                          ("test paper", PaperListDataset(data, "test", history))):
        n = min(batch_size, len(dataset))
        if n == 0:
            continue
        batch = dataset[np.linspace(0, len(dataset) - 1, n).astype(np.int64)]  # spread over users
        lines.append(f"  sample {name} batch (B={n}, N={history}):")
        for key, tensor in batch.items():
            shape = "x".join(str(s) for s in tensor.shape)
            # 1-d: the batch's values; 2-d: the last example's row (for histories, its most recent
            # entries: they are right-aligned).
            row = tensor if tensor.dim() == 1 else tensor[-1]
            tail = key.startswith("history_") and tensor.dim() == 2
            shown = [round(x, 3) if isinstance(x, float) else x for x in (row[-6:] if tail else row[:6]).tolist()]
            more = len(row) > 6
            preview = (("..., " if tail and more else "") + ", ".join(map(str, shown))
                       + (", ..." if more and not tail else ""))
            lines.append(f"    {key:<27} {str(tensor.dtype).replace('torch.', ''):<8} [{shape}]  [{preview}]")
    return "\n".join(lines)
