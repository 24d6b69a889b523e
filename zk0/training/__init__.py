"""The trainer as a library: the LightningModule, DataModule, local training, LR schedules and FedProx's
proximal term, used alike by the participant, the centralized baseline and the benchmarks."""
