"""``python -m nsr_gym.cli``."""

import sys

from nsr_gym.cli import main

sys.exit(main())
