"""Put on PYTHONPATH by `SMOKE=1 bash benchmarks/gpu.sh`: the packages that the accelerator machine
lacks become unimportable, so the CPU smoke run fails where the GPU run would."""

from absent import block

block()
