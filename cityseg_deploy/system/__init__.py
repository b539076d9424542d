"""Facts about the machine (CPU, instruction sets, GPU, versions) and stage timers.

Below every stage: the runtime times its stages and checks for native bf16, bench reports the
machine; neither depends on the other for it.
"""
