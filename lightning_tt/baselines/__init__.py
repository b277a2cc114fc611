"""Baselines on a prepared split (non-neural ones and SASRec), scored with the model's metric code
(lightning_tt.eval) and names (``{split}/next/recall@k``, ``{split}/paper/{recall,ndcg,coverage}@k``).

Training data = the training positives (Listen+ events before train_end; SASRec also reads the other
training listens as inputs, as history windows hold them). Each baseline ranks the
catalogue (padding and unknown never recommended) for a query = (user, seed track, history window),
``h_1`` = the seed (the latest listen), ``h_j`` the j-th latest listen of the window:

- Random: uniform items (seeded).
- MostPop: items by number of training positives, ``pop(x)``.
- DecayPop: by recency-weighted positives, weight ``0.5 ** (age / half_life)``, age = train_max_timestamp - t.
- Transitions: a first-order chain over the last ``previous`` listens with additive backoff to
  popularity: ``score(x) = sum_j (1/j) (c(h_j -> x) + backoff * p(x)) / (c(h_j) + backoff)``, where
  ``c(a -> b)`` counts training examples whose seed is ``a`` and target ``b``, ``c(a) = sum_b c(a -> b)``
  and ``p(x) = pop(x) / sum pop`` (an unseen seed backs off to popularity entirely).
- ItemKNN: ``score(x) = sum over the last ``history`` listens h of s(h, x)``, from the co-occurrence
  ``c_ij`` (users with both items among their training positives) and ``n_i`` (users with item i):
  ``cosine`` ``s = c_ij / (sqrt(n_i n_j) + shrink)`` or ``conditional`` ``s = c_ij / (n_i + shrink)``;
  each item keeps its ``neighbours`` most similar items (default None: all, up to 100,000 items; 200 above),
  ``s(i, i) = 0``. Only the rows of items that queries hold are computed, in bounded blocks.
- iALS, BPR: matrix factorisation of the binary user x item positives with the ``implicit`` library;
  they rank for the user (seed and history are not used). iALS weighs a positive ``1 + alpha``
  (confidence) against 1 for every other cell.
- SASRec (Kang & McAuley 2018; sasrec.py): an ID-only causal transformer over the history window,
  ``score(x) = <h, E_x>``, h = the encoder's output at the last known listen of the window (the seed),
  ``E`` the item table it reads its inputs from (tied); trained with softmax cross-entropy at every
  position of each user's training listens (target = the next listen when it is a training positive),
  full-catalogue up to ``SASRec.FULL_SOFTMAX_ITEMS`` (100,000) items, sampled with the logQ
  correction above. A history with no known listen gets the ``pop`` ranking.

Items scored equally (e.g. no successor of the seed) are ranked by ``pop``. Every baseline but Random
has ``exclude_seen``: drop what the user listened to before the case from the list
(lightning_tt.data.seen, the model's own). It matters on data without repeats: on the development
set (MovieLens) no evaluation target is an item its user rated before, so a list that keeps them
wastes its places (docs/ablations.md, Part 1 findings).

``tune`` chooses each baseline's hyperparameters on the validation window (the model's protocol: fit
on the training positives only, select by one validation metric) from the small grids of
``Baseline.grid``, then reports the test window with the chosen values.

Next-track queries are the split's cases; paper queries are one per user, from the state at the
window start (seed = the last listen before it).
"""

from lightning_tt.baselines.evaluation import evaluate, tune
from lightning_tt.baselines.models import BPR, IALS, Baseline, DecayPop, ItemKNN, MostPop, Random, Transitions
from lightning_tt.baselines.registry import ALL
from lightning_tt.baselines.sasrec import SASRec

__all__ = ["ALL", "BPR", "IALS", "Baseline", "DecayPop", "ItemKNN", "MostPop", "Random", "SASRec", "Transitions",
           "evaluate", "tune"]
