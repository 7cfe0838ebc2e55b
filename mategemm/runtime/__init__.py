"""Driver-side runtime: device facts, TMA descriptors, module load and launch."""
