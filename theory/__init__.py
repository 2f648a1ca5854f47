"""Theorem 1 of the NSR paper, stated so it can be tested: model, bounds, estimation, verification.

Installed and imported as ``nsr_gym.theory`` (the folder sits at the top of the repository).
Pure math and statistics on numpy / pandas arrays: nothing here imports the envs, the studies or
``nsr_gym.agents``. From the library it takes only shared definitions: the recovery time
(:func:`nsr_gym.metrics.recovery_time`) and the seed bootstrap (:func:`nsr_gym.stats.mean_ci`).
Modules, one concept each:

* ``theory.model``: the exponential experience curve, the phase deficit ``Phi``, Bank experience
  ``H_c``, recovery times.
* ``theory.theorem1``: the cyclic setting, ``Delta_switch``, Theorem 1' lower bounds, Theorem 2,
  exact regrets of the tight policies against the Bank oracle.
* ``theory.simulate``: a tiny reference simulator of the env's semantics, for checking them.
* ``theory.capacity``: Theorem 3, a bank of fewer slots than tasks: hits per cycle, the
  regret bound against the unbounded Bank, closed forms per retention rule, Belady's MIN
  with bypass as the offline hit bound for any schedule.
* ``theory.estimate``: ``Delta_switch``, curve fits, forgetting and truncation from logs.
* ``theory.verify``: regret slopes, the seed bootstrap, the one-sided verdict.
* ``theory.fit``: the analytic learner's parameters fitted to logged curves (torch runs).
* ``theory.protocol``: the whole verification protocol on logged phase records.

The package re-exports every module's public names; each module's ``__all__`` is the one list
of them. See ``theory/THEORY.md`` for the statement; the module docstrings carry the proofs and
say which readings of the abstract are interpretations.
"""

from __future__ import annotations

from nsr_gym.theory import capacity, estimate, fit, model, protocol, simulate, theorem1, verify
from nsr_gym.theory.capacity import *  # noqa: F403
from nsr_gym.theory.estimate import *  # noqa: F403
from nsr_gym.theory.fit import *  # noqa: F403
from nsr_gym.theory.model import *  # noqa: F403
from nsr_gym.theory.protocol import *  # noqa: F403
from nsr_gym.theory.simulate import *  # noqa: F403
from nsr_gym.theory.theorem1 import *  # noqa: F403
from nsr_gym.theory.verify import *  # noqa: F403

_MODULES = (capacity, estimate, fit, model, protocol, simulate, theorem1, verify)

__all__ = sorted({name for module in _MODULES for name in module.__all__})
