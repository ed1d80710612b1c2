"""What a run says when its data cannot be loaded: the DatasetError's own message, whole,
on one line (stops.data_error reads it from the child's error text)."""

from __future__ import annotations


def test_a_data_errors_message_is_kept_whole_on_one_line() -> None:
    """A library's message inside the DatasetError may span lines (pickle's does, for some
    corrupt files); the stop keeps all of it, with the file's name, as one line."""
    from lemo_nade.stops import data_error

    child = (
        'Traceback (most recent call last):\n  File "worker.py", line 9\n'
        "lemo_nade.datasets.DatasetError: dataset: cannot read /d/data_batch_2 as a cifar10 "
        "pickle (A load persistent id instruction was encountered,\nbut no persistent_load "
        "function was specified.); the original python-format file is expected: URL"
    )
    detail = data_error(child)
    assert detail.startswith("dataset: cannot read /d/data_batch_2 as a cifar10 pickle")
    tail = "encountered, but no persistent_load function was specified.); the original "
    assert "\n" not in detail and detail.endswith(tail + "python-format file is expected: URL")
    assert data_error("") == "the dataset could not be loaded"
