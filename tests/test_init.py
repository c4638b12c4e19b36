"""The package's top level: every public name loads on first use, and store-only work never imports torch."""
import subprocess
import sys

import relprop


def test_every_public_name_resolves_and_star_import_gives_them_all():
    for name in relprop.__all__:
        assert getattr(relprop, name) is not None, name
    namespace = {}
    exec("from relprop import *", namespace)
    assert set(relprop.__all__) <= set(namespace)
    assert set(relprop.__all__) <= set(dir(relprop))
    assert relprop.LRP.__module__.startswith("relprop.")


def test_an_unknown_name_is_an_attribute_error_naming_it():
    try:
        relprop.NoSuchThing
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("no AttributeError")


def test_spray_and_its_report_on_a_store_do_not_import_torch(tmp_path):
    # torch costs about 500 MiB of memory on a CUDA build; reading, pooling and clustering heatmaps do not need it
    code = (
        "import sys, numpy as np\n"
        "import relprop, relprop.datasets\n"
        "from relprop.analysis import spray, pages\n"
        "from relprop.datasets import store\n"
        "features = spray.pool(np.random.default_rng(0).random((20, 3, 8, 8)), 3)\n"
        "assert features.shape == (20, 9)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_command_line_loads_a_command_only_when_it_runs():
    # `relprop spray --help` (and the spray run until its report) needs no torch; --help for all lists every command
    code = (
        "import sys\n"
        "from relprop.cli import main, COMMANDS\n"
        "try:\n"
        "    main(['spray', '--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert sorted(main.list_commands(None)) == sorted(COMMANDS)\n"
        "assert all(main.get_command(None, name).name == name for name in COMMANDS)\n"
        "assert main.get_command(None, 'nonesuch') is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_submodule_read_as_an_attribute_is_imported_then():
    code = (
        "import relprop\n"
        "assert relprop.datasets.store.Store is relprop.datasets.Store\n"
        "assert relprop.engine.intercept.OpMode is not None and relprop.rules.Epsilon is not None\n"
        "for missing in ('nonesuch', '__wrapped__'):\n"
        "    try:\n"
        "        getattr(relprop, missing)\n"
        "    except AttributeError as error:\n"
        "        assert missing in str(error)\n"
        "    else:\n"
        "        raise AssertionError(missing)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
