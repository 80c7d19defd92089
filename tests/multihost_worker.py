"""One process of a multi-process (multi-host) training run on CPU, for tests/test_multihost.py.

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR EPOCHS

Each process gets 2 fake CPU devices; the processes form one mesh through
``jax.distributed.initialize`` (gloo collectives on CPU).
"""

import faulthandler
import json
import os
import signal
import sys

if __name__ == "__main__":
    pid, nproc, port, workdir, epochs = sys.argv[1:6]
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test dumps stacks on a hang
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=int(nproc), process_id=int(pid))
    from configs import test as test_config
    from diffrec_jax import training

    c = test_config.get_config()
    c.train.num_devices, c.num_seeds, c.train.num_epochs = 0, 2, int(epochs)
    res = training.train_and_evaluate(c, workdir)
    print("RESULT", json.dumps({"devices": jax.device_count(), "test": res["test"]}), flush=True)
