"""Test-only pacing of training steps, so a test can act on a job mid-run on a machine of any speed.

The service tests put this folder on the ``PYTHONPATH`` of the server they start (and so of its training children)
with ``TUNEFORGE_TEST_PACE=<file>``. While that file exists, every optimizer step sleeps the seconds written in it
(torch's global optimizer step hook); without the file, steps run at full speed. Nothing in tuneforge knows of it.
"""

import os

_PACE = os.environ.get("TUNEFORGE_TEST_PACE")

if _PACE:
    import time

    from torch.optim.optimizer import register_optimizer_step_post_hook

    def _pace(optimizer, args, kwargs) -> None:
        try:
            with open(_PACE) as f:
                time.sleep(float(f.read() or 0))
        except (OSError, ValueError):
            pass

    register_optimizer_step_post_hook(_pace)
