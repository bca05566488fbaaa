"""The public surface is curated: this pins it, so a change to it is a deliberate one."""

import resumable
import resumable.callbacks


def test_public_names_are_pinned():
    assert sorted(resumable.__all__) == sorted([
        "__version__", "Callback", "CheckpointCorruptError", "CheckpointError", "CheckpointVersionError",
        "ConfigurationError", "Experiment", "ModelCheckpoint", "Module", "ProgressBar", "ResumableError",
        "RunLockedError", "StateMismatchError", "StopTraining", "StorageError", "Trainer",
        "UnsupportedStateError", "load_checkpoint", "seed_everything", "verify_resume",
    ])
    assert sorted(resumable.callbacks.__all__) == ["Callback", "ModelCheckpoint", "ProgressBar", "StopTraining"]
    for name in resumable.__all__:
        assert getattr(resumable, name) is not None


def test_every_public_callable_has_a_docstring():
    for name in resumable.__all__:
        obj = getattr(resumable, name)
        if callable(obj):
            assert obj.__doc__, name


def test_one_error_tree():
    for name in resumable.__all__:
        obj = getattr(resumable, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not resumable.StopTraining:
            assert issubclass(obj, resumable.ResumableError), name
