"""Audit: where and how two networks of one architecture differ.

`challenge` says *that* a published file differs from a rebuild; `diff` (see
`reweigh.verbs.diff`) says where and how, so a user can judge what was changed.
The package follows the report's sections:

- `weights`   weight space: per-tensor distances, ranked (pure, memory-mapped);
- `behaviour` answers on the recipe's evaluation data: disagreement, confusion
              difference, the inputs that moved most (pure);
- `trigger`   a search for a small patch that drives the suspect to one class while
              the reference holds (torch, inside the sandbox);
- `probes`, `text`  prompts for language models, and how both continue them;
- `child`     what runs inside the sandboxed child: the recipe's model code;
- `report`    the self-contained HTML page.

Each section carries explicit `flagged` booleans and the thresholds behind them.
"""
