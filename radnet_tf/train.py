"""`python -m radnet_tf.train`: the command-line entry point kept at its public path.

The code lives in `radnet_tf.training.train`; importing this module gives that module.
"""

import sys

from radnet_tf.training import train as _impl

if __name__ == "__main__":
    _impl.main()
else:
    sys.modules[__name__] = _impl
