"""`python -m radnet_tf.export`: the command-line entry point kept at its public path.

The code lives in `radnet_tf.serving.export`; importing this module gives that module.
"""

import sys

from radnet_tf.serving import export as _impl

if __name__ == "__main__":
    _impl.main()
else:
    sys.modules[__name__] = _impl
