"""The evaluation step's flip test: the image and its mirror in two network calls or in one."""

import jax
import numpy as np

from conftest import tiny_config
from hrnet_jax import benchmark
from hrnet_jax.flop_count import inner_jaxprs
from hrnet_jax.train.state import init_variables


def _convolutions(jaxpr) -> int:
    """conv_general_dilated equations in ``jaxpr`` and the jaxprs nested in it."""
    return sum((eqn.primitive.name == "conv_general_dilated")
               + sum(_convolutions(inner) for value in eqn.params.values()
                     for inner in inner_jaxprs(value))
               for eqn in jaxpr.eqns)


def test_joining_the_mirrors_calls_the_network_once_and_evaluates_the_same():
    results, convolutions = {}, {}
    for join in (False, True):
        cfg = tiny_config("model.scan=none", "test.batch_size_per_device=3",
                          f"test.join_mirrors={str(join).lower()}")
        variables = init_variables(cfg, jax.random.key(0))
        data = benchmark.synthetic_batch(cfg, 3, seed=1)
        case = benchmark.eval_case(cfg, variables, data, flip_test=True)
        convolutions[join] = _convolutions(jax.make_jaxpr(case.step)(*case.args).jaxpr)
        results[join] = jax.device_get(case.run(case.step, 1))
    # the same network, traced once for the batch of 6 instead of twice for 3
    assert convolutions[False] == 2 * convolutions[True] > 0
    (outputs_two, sums_two), (outputs_one, sums_one) = results[False], results[True]
    for key in ("output", "preds", "maxvals"):
        np.testing.assert_allclose(outputs_one[key], outputs_two[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    for key in sums_two:
        np.testing.assert_allclose(sums_one[key], sums_two[key], rtol=1e-5, err_msg=key)
