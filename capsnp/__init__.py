"""capsnp: capsule products of experts in NumPy and Numba.

The mathematics is specified in MODEL.md (shipped as ``docs/MODEL.md``); every public function
cites the equation label it implements, and the lessons in ``lessons/`` derive each one.
"""

import os as _os

# On small machines Numba's default OpenMP layer oversubscribes against BLAS threads;
# the workqueue layer does not. A user's explicit choice is kept.
_os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

__version__ = "0.1.0"

from .ops import sigmoid, softmax, softplus, squash, squash_vjp  # noqa: E402
from .capsules import from_capsules, predictions, to_capsules  # noqa: E402
from .params import GParams, PParams, RBMParams, RBParams, RParams, RSParams, SParams  # noqa: E402
from .routing import dynamic_routing, dynamic_routing_vjp  # noqa: E402
from .estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM  # noqa: E402
from .ais import ais_log_partition  # noqa: E402
from .likelihood import exact_log_partition  # noqa: E402
