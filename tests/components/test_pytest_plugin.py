"""The pytest plugin (registered through the pytest11 entry point): fixture and --topoverify-optimizer."""

import os

# Import torch's lazily loaded compiler modules once in this process: pytester's in-process runs drop the modules
# first imported inside them, and a re-import registers torch's operator library twice (a RuntimeError in the
# first optimizer built), so the file failed when run on its own.
import torch._dynamo  # noqa: F401

pytest_plugins = ["pytester"]

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/, home of broken_optimizers.py


def _env(pytester):
    pytester.syspathinsert(TESTS_DIR)


def test_fixture_passes_and_fails(pytester):
    _env(pytester)
    pytester.makepyfile("""
        import torch
        from broken_optimizers import PerIndexLR

        def test_good(topoverify_check):
            report = topoverify_check(torch.optim.SGD, examples=2, conv=False)
            assert report.ok

        def test_bad(topoverify_check):
            topoverify_check(PerIndexLR, examples=2, conv=False)

        def test_t6(topoverify_check):
            topoverify_check.symmetry(torch.optim.Adam)
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*not verified permutation-equivariant*not_equivariant*"])


def test_option_runs_packaged_checks(pytester):
    _env(pytester)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider",
                                "--topoverify-optimizer", "torch.optim:SGD", "--topoverify-kwargs",
                                '{"lr": 0.01}', "--topoverify-examples", "2")
    result.assert_outcomes(passed=3)


def test_option_reports_broken_optimizer(pytester):
    _env(pytester)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider",
                                "--topoverify-optimizer", "broken_optimizers:NoisySGD", "--topoverify-examples", "2")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*STOCHASTIC*", "*T6 broken*"])


def test_bad_kwargs_is_usage_error(pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--topoverify-optimizer", "torch.optim:SGD",
                                "--topoverify-kwargs", "nope")
    assert result.ret == 4


def test_timeout_option_reaches_the_packaged_checks(pytester):
    _env(pytester)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--topoverify-optimizer", "broken_optimizers:SlowOnLarge",
                                "--topoverify-examples", "1", "--topoverify-timeout", "2")
    result.assert_outcomes(passed=2, failed=1)  # T6 runs no large tensor; the equivariance check hangs on one
    result.stdout.fnmatch_lines(["*SlowOnLarge: ERROR*", "*time limit of 2 s*SlowOnLarge.update*"])
    bad = pytester.runpytest("--topoverify-optimizer", "torch.optim:SGD", "--topoverify-timeout", "-1")
    assert bad.ret == 4
