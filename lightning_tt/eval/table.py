"""A fixed-width table of metric values, one row per model (the demo's and the baselines' output)."""

from __future__ import annotations

from lightning_tt.eval.metrics import metric_name


def print_table(rows: dict[str, dict], stage: str, columns: list[tuple[str, str, int]],
                exact_rows: tuple[str, ...] = (), params: bool = False) -> None:
    """One row per model (``rows``: {name: {metric_name: value}}), one column per (protocol, metric, k) of
    ``stage``; the rows named in ``exact_rows`` show their exact (``exact_``) values. With ``params``,
    each row's ``params`` entry (a baseline's hyperparameters) follows the numbers."""
    header = "".join(f"{f'{protocol}/{metric}@{k}':>20}" for protocol, metric, k in columns)
    print("    " + f"{'':<12}" + header + ("  params" if params else ""))
    for name, values in rows.items():
        names = [metric_name(stage, protocol, metric, k, exact=name in exact_rows) for protocol, metric, k in columns]
        chosen = ", ".join(f"{k}={v}" for k, v in values.get("params", {}).items()) if params else ""
        print("    " + f"{name:<12}" + "".join(f"{values.get(n, float('nan')):>20.4f}" for n in names)
              + (f"  {chosen}" if chosen else ""))
