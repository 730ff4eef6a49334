"""The torch side: LSQ quantizers (``lsq``), training and scoring (``train``), model checkpoints
(``checkpoint``), the map between ONNX layers and torch modules (``torchmap``), and a task's
network as library calls: train, apply a plan, fine-tune, evaluate (``network``)."""
