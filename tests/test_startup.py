"""What entry points do before their heavy imports: the collector stays out of the imports, and comes back after."""
from __future__ import annotations

import gc
import json

from test_imports import ROOT, fresh_python

from mmgpt.startup import imports_without_gc


def test_imports_run_without_the_collector_and_what_they_made_is_frozen() -> None:
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        with imports_without_gc():
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]  # stands for the objects an import makes
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(made)
    finally:
        gc.unfreeze()


def test_a_collector_the_caller_turned_off_stays_off_and_nothing_is_frozen() -> None:
    gc.disable()
    try:
        frozen = gc.get_freeze_count()
        with imports_without_gc():
            pass
        assert not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()


def test_train_py_imports_the_loop_without_collecting() -> None:
    # train.py as `accelerate launch` runs it, up to its main(): the imports' objects end up frozen, the collector on
    # collections counted from the moment train.py has the helper, before it imports the loop
    code = ("import gc, json, runpy, sys; collections = []; "
            "gc.callbacks.append(lambda phase, info: 'mmgpt.startup' in sys.modules and collections.append(phase)); "
            "runpy.run_path('train.py', run_name='train'); "
            "print(json.dumps([gc.isenabled(), gc.get_freeze_count(), len(collections)]))")
    enabled, frozen, collections = json.loads(fresh_python(code, cwd=ROOT).splitlines()[-1])
    assert enabled and frozen > 100_000 and collections == 0
