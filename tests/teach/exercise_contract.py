"""What every exercise checker promises, written once: each ``tests/teach/test_exercises_<module>.py`` subclasses
:class:`ExerciseContract` with its module and, per checker, a correct solution and typical wrong ones.

A checker accepts the correct solution (written the way a learner would, not by calling the library), says
"not solved yet" for a stub (NotImplementedError or None) without raising, rejects each wrong solution with an
explanation that contains the given phrase, and raises TypeError only for something that is not callable.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from moe_lib.teach.exercises._engine import FAILED, PASSED, UNSOLVED


def stub(*args):
    raise NotImplementedError


def returns_none(*args):
    pass


class ExerciseContract:
    """Subclass as ``Test...`` and set ``module`` and ``checks``: checker name -> (solution, [(wrong, phrase)])."""

    module: ModuleType
    checks: dict[str, tuple]

    def pytest_generate_tests(self, metafunc):
        if "name" in metafunc.fixturenames:
            metafunc.parametrize("name", list(self.checks))
        if "mistake" in metafunc.fixturenames:
            cases = [(name, i) for name, (_, wrong) in self.checks.items() for i in range(len(wrong))]
            metafunc.parametrize("mistake", cases, ids=[f"{name}-{i}" for name, i in cases])
        if "unsolved" in metafunc.fixturenames:
            metafunc.parametrize("unsolved", [stub, returns_none], ids=["NotImplementedError", "None"])

    def checker(self, name: str):
        return getattr(self.module, name)

    def test_every_checker_of_the_module_is_covered(self):
        exported = {name for name in self.module.__all__ if name.startswith("check_")}
        assert exported == set(self.checks)

    def test_accepts_the_solution(self, name):
        result = self.checker(name)(self.checks[name][0])
        assert result.passed and bool(result), result.message
        assert result.status == PASSED and result.message.startswith("PASS  ")
        assert repr(result) == result.message

    def test_unsolved_stub_says_not_solved_yet(self, name, unsolved):
        result = self.checker(name)(unsolved)
        assert result.status == UNSOLVED and not result
        assert result.message.startswith("not solved yet")

    def test_rejects_a_typical_mistake_and_explains_it(self, mistake):
        name, index = mistake
        fn, phrase = self.checks[name][1][index]
        result = self.checker(name)(fn)
        assert result.status == FAILED and not result, result.message
        first = result.message.splitlines()[0]
        assert first.startswith("FAIL  ") and "case " in first
        assert "input " in result.message, result.message
        assert phrase in result.message, result.message

    def test_same_function_same_verdict(self, name):
        wrong = self.checks[name][1][0][0]
        assert self.checker(name)(wrong).message == self.checker(name)(wrong).message

    def test_not_callable_raises_type_error(self, name):
        with pytest.raises(TypeError, match="fn must be"):
            self.checker(name)(42)
