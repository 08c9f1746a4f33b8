"""`python -m radnet_tf.synth`: the command-line entry point kept at its public path.

The code lives in `radnet_tf.phantom.cli`; importing this module gives that module.
"""

import sys

from radnet_tf.phantom import cli as _impl

if __name__ == "__main__":
    _impl.main()
else:
    sys.modules[__name__] = _impl
