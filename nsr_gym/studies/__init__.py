"""Studies and benchmark commands: each module computes one command's results and writes its report.

This floor sits above the library core, :mod:`nsr_gym.agents` and :mod:`nsr_gym.theory`; the CLI
(:mod:`nsr_gym.cli`) only parses arguments and calls these modules, and nothing here imports it.
"""
