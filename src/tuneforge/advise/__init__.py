"""Before training: should I fine-tune (assess), how on this machine (plan), with which settings (sweep), and how
deep to freeze (probe).

    from tuneforge.advise import assess, plan, probe, sweep
"""

from __future__ import annotations

from tuneforge.advise.assess import assess
from tuneforge.advise.depth import probe
from tuneforge.advise.plan import plan
from tuneforge.advise.sweep import sweep

__all__ = ["assess", "plan", "probe", "sweep"]
