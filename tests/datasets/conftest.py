"""Fixtures for the data-set tests: a data set file that subprocesses and the Python API both read."""
import pytest

# A data set file for runs in subprocesses: demo shapes, one unreadable sample (5), ids of its own, an optional delay
# per sample, and a gate: with SHAPES_STOP_AT=N, reading sample N or later waits forever, so a run holds at a known
# point (samples before N written, its lock held) until the test kills it, however slow or loaded the machine is;
# SHAPES_HELD=FILE creates FILE when a reader is held there.
DATASET_FILE = '''
import os, threading, time
import torch
from relprop.demo import generate, normalize

class Shapes(torch.utils.data.Dataset):
    classes = ["circle", "square", "triangle", "cross"]

    def __init__(self, count, delay):
        images, labels, _ = generate(count, seed=3)
        self.images, self.labels, self.delay = normalize(torch.from_numpy(images)), labels, delay

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        stop = os.environ.get("SHAPES_STOP_AT")
        if stop is not None and index >= int(stop):
            if os.environ.get("SHAPES_HELD"):  # tells the test that a reader is held now
                open(os.environ["SHAPES_HELD"], "a").close()
            threading.Event().wait()  # held here until the test kills the process
        time.sleep(self.delay)
        if index == 5:
            raise ValueError("sample 5 is broken on purpose")
        return self.images[index], int(self.labels[index]), f"shape-{index:03d}"

def slow():
    return Shapes(60, float(os.environ.get("SHAPES_DELAY", "0.03")))

def quick():
    return Shapes(24, 0.0)
'''


@pytest.fixture
def dataset_file(tmp_path):
    path = tmp_path / "shapes_data.py"
    path.write_text(DATASET_FILE)
    return path
