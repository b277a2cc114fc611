"""``ALL``: the baselines ``lightning-tt baselines`` runs (and ``tune`` searches), in report order. Its
own module so that a baseline module may import the interface (``models.Baseline``) without a cycle."""

from lightning_tt.baselines.models import BPR, IALS, DecayPop, ItemKNN, MostPop, Random, Transitions
from lightning_tt.baselines.sasrec import SASRec

ALL = (Random, MostPop, DecayPop, Transitions, ItemKNN, IALS, BPR, SASRec)
