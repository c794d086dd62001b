"""tuneforge: fine-tune pre-trained models on your own task data.

import tuneforge
run = tuneforge.train("configs/classify-minilm-rotten.yaml")      # or a RunConfig / dict
run.evaluate()                                                     # eval.json: tuned beside baseline
run.predict(["a gripping, beautiful film"])                        # [{'label': 'fresh', ...}]
"""

import tuneforge.tasks  # noqa: F401  (registers the tasks' config rules)
import tuneforge.train  # noqa: F401  (loaded before ``train`` below, which then stays the function)
from tuneforge.config import RunConfig, load_config
from tuneforge.errors import TuneforgeError
from tuneforge.methods.peft_registry import install as install_peft_methods
from tuneforge.run import Run
from tuneforge.utils import bound_kernel_caches

bound_kernel_caches()  # before any matmul runs: oneDNN reads the cache sizes once
install_peft_methods()  # PeftModel.from_pretrained loads houlsby/pfeiffer adapters (on PEFT's first import)

__version__ = "0.1.0"


def train(config, overrides=None, resume=False) -> Run:
    """Fine-tune as ``config`` says (a YAML path, a dict or a ``RunConfig``); returns the finished ``Run``.

    (``tuneforge.train`` the function shadows the subpackage of the same name as an attribute; import the
    loop's modules by their full names: ``from tuneforge.train.loop import fit``.)
    """
    from tuneforge.recipe import train as _train

    return _train(config, overrides, resume)


def load_run(path) -> Run:
    return Run(path)


__all__ = ["Run", "RunConfig", "TuneforgeError", "__version__", "load_config", "load_run", "train"]
