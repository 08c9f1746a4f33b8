"""`python -m radnet_tf.inspect_series`: the command-line entry point kept at its public path.

The code lives in `radnet_tf.io.inspect`; importing this module gives that module.
"""

import sys

from radnet_tf.io import inspect as _impl

if __name__ == "__main__":
    _impl.main()
else:
    sys.modules[__name__] = _impl
