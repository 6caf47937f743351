"""jaxode.compile_log: a new program is one compilation, a cache hit none."""

import jax
import jax.numpy as jnp

from jaxode.compile_log import CompileCounter, CompileLog, compile_count


def test_counter_sees_a_new_program_and_not_a_cache_hit():
    @jax.jit
    def cube_plus_one(x):
        return x ** 3 + 1

    x3, y3, x4 = jnp.ones(3), jnp.zeros(3), jnp.ones(4)   # made outside the windows
    before = compile_count()
    with CompileCounter() as first:
        cube_plus_one(x3).block_until_ready()
    with CompileCounter() as again:
        cube_plus_one(y3).block_until_ready()                # same shape: cached
    with CompileCounter() as new_shape:
        cube_plus_one(x4).block_until_ready()                # new shape: compiles
    assert first.count == 1 and first.count_of("cube_plus_one") == 1
    assert again.count == 0
    assert new_shape.count == 1
    assert compile_count() - before == 2
    window = CompileLog.get().since(0)
    assert window["backend_compile_s"] > 0 and "cube_plus_one" in " ".join(window["names"])
