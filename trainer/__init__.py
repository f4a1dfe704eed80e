"""Training, evaluation and the model registry.

OpenMP's wait policy is set here, before any module of this package imports torch: torch's
intra-op threads meet at a barrier after every operation, and by default a thread that arrives
first spins there. On a host whose cores are busy (the API, a scrape, another job, CI) the thread
it waits for is often descheduled, so each of the thousands of small operations of a training
waits a scheduler tick: a 32 px forward pass took 147 ms instead of 2.9 ms on 2 loaded cores.
PASSIVE threads sleep at the barrier instead (bench/omp_wait.py measures both, idle and loaded).
An operator's own OMP_WAIT_POLICY wins; it must be set before torch is first imported.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
