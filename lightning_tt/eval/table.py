"""A fixed-width table of metric values, one row per model (the demo's and baselines' output)."""

from __future__ import annotations


def print_table(rows: dict[str, dict], columns: list[str], params: bool = False) -> None:
    """A fixed-width table: one row per model, one column per metric name; with ``params``, each row's
    ``params`` entry (a baseline's hyperparameters) after the numbers."""
    short = [c.split("/", 1)[1] for c in columns]
    print("    " + f"{'':<12}" + "".join(f"{c:>20}" for c in short) + ("  params" if params else ""))
    for name, values in rows.items():
        chosen = ", ".join(f"{k}={v}" for k, v in values.get("params", {}).items()) if params else ""
        print("    " + f"{name:<12}" + "".join(f"{values.get(c, float('nan')):>20.4f}" for c in columns)
              + (f"  {chosen}" if chosen else ""))
