"""The healthy reference: the FashionMNIST classifier of the PyTorch basics tutorial,
its train/eval protocol (:mod:`~torchdoctor.reference.trainer`) and its data with the
synthetic offline fallback (:mod:`~torchdoctor.reference.data`)."""

from torchdoctor.reference.trainer import (
    EPOCH_HEADERS,
    NUM_CLASSES,
    REFERENCE_BATCH_SIZE,
    REFERENCE_LR,
    EpochRecord,
    FashionMNISTClassifier,
    evaluate,
    expected_initial_loss,
    fit,
    forward,
    load_checkpoint,
    reference_loss,
    reference_optimizer,
    reference_setup,
    save_checkpoint,
    train_epoch,
    train_steps,
)

__all__ = [
    "EPOCH_HEADERS", "NUM_CLASSES", "REFERENCE_BATCH_SIZE", "REFERENCE_LR", "EpochRecord",
    "FashionMNISTClassifier", "evaluate", "expected_initial_loss", "fit", "forward",
    "load_checkpoint", "reference_loss", "reference_optimizer", "reference_setup",
    "save_checkpoint", "train_epoch", "train_steps",
]
