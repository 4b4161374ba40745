"""Post-hoc diagnostic (not part of the product): the outer leave-one-dataset-out top-1 / top-4 regret of
every choice of the nested grid fitted *without* selection, per held-out dataset: what the selection
could have picked at best, and what each fixed recipe gives.

    PYTHONPATH=. nice -n 10 .venv/bin/python scripts/meta_per_choice_regret.py RECORDS OUT.csv
"""
import sys, time
import numpy as np, pandas as pd
from autodistill.meta import evaluate as ev
from autodistill.meta.table import table_from_paths
t0 = time.time()
table = ev.drop_meta_features(table_from_paths(sys.argv[1]))
choices = [c for c in ev.default_choices() if c.applies_to(table)]
rows = []
for group, contexts in ev._evaluable_contexts(table).items():
    train, _ = ev._hold_out(table, [group])
    for held in contexts:
        test_rows = table[table["dataset"] == held]
        test = ev.test_features(table, held)
        y = test_rows["target"].to_numpy(dtype=float)
        for c in choices:
            m = ev.ranking_metrics(y, ev._choice_scores(c, train, test, 0), with_spearman=False)
            rows.append({"dataset": held, "choice": c.label, "regret1": m["regret1"], "regret4": m["regret4"]})
    print(group, round(time.time() - t0), file=sys.stderr, flush=True)
out = pd.DataFrame(rows)
out.to_csv(sys.argv[2], index=False)
piv = out.pivot(index="dataset", columns="choice", values="regret1")
print(piv.round(4).T.to_string())
print(piv.mean().round(4).sort_values().to_string())
