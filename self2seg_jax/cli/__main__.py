import sys

from self2seg_jax.cli import main

sys.exit(main())
