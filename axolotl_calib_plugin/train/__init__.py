"""Training: the Axolotl plugin and everything it runs inside ``axolotl train`` (settings, dataset strategy,
collator, trainer, E-step / M-step, the calibration loss, resume checks). May use the shared core and eval/."""
