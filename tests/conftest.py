"""Shared test setup: JAX on the CPU, strict dtype promotion, a key fixture."""

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Free every compiled XLA program after each test module.  XLA:CPU memory-maps the
    code of each program it keeps (measured: ~960 maps for one backsolve gradient of a
    small conv block, ~590 for a checkpointed one), and a whole suite in one process
    went past Linux's default vm.max_map_count (65,530): the compiler then crashed with
    a segmentation fault in whatever test came next (twice, at tests ~606 and ~640 of
    692, 2026-12-06).  `jax.clear_caches` releases them (1,396 -> 520 maps)."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="module")
def xla_disk_cache(tmp_path_factory):
    """JAX's persistent compilation cache in a fresh folder, for one test module: a
    program compiled again with the same HLO is read back instead of compiled.  That
    happens when a test trains the same model twice (each `fit` builds a new optimizer,
    a new static argument of the jitted step) and in child processes (each starts with
    an empty in-memory cache; they inherit the folder through the environment).  A
    cache hit is the executable compiled before for that exact program and compiler
    options, so the results are the same.  JAX never caches a program with host
    callbacks, which includes every ODE solve (Equinox's `error_if`): measured, this
    helps models without ODE blocks only (tests/test_checkpoint_orbax.py's ResNet);
    the kill/resume test of ODE-Nets took as long with it as without."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    folder = str(tmp_path_factory.mktemp("xla-cache"))
    options = {"jax_compilation_cache_dir": folder,
               "jax_persistent_cache_min_compile_time_secs": 0.0}
    before = {k: getattr(jax.config, k) for k in options}
    env = {"JAX_COMPILATION_CACHE_DIR": folder, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k, v in options.items():
            jax.config.update(k, v)
        cc.reset_cache()  # the cache reads its folder once: make it read the new one
        try:
            yield folder
        finally:
            for k, v in before.items():
                jax.config.update(k, v)
            cc.reset_cache()


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture
def shared_data():
    """The offline datasets beside the project (`../shared/data`), or the folder named
    by JAXODE_DATA; tests that need it skip when it is absent."""
    root = os.environ.get("JAXODE_DATA") or os.path.join(
        os.path.dirname(__file__), "..", "..", "shared", "data"
    )
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        pytest.skip(f"offline data not found at {root}; set JAXODE_DATA")
    return root


@pytest.fixture(scope="module")
def x64():
    """Float64 for a whole test module (the ODE-core accuracy and gradient tests need
    it to resolve tight tolerances); the flag is restored after the module, so other
    modules keep JAX's float32 default.  Module-scoped fixtures that build arrays must
    request this fixture so that they are created inside it."""
    with jax.enable_x64(True):
        yield


def _write_image_folder(root, classes: dict[str, int], size=(32, 32), mode="RGB"):
    """A tiny ``root/{train,test}/<class>/<n>.png`` image folder of random pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                shape = size + ((3,) if mode == "RGB" else ())
                pixels = rng.integers(0, 255, shape, dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")


@pytest.fixture(scope="session")
def make_image_folder():
    """``make_image_folder(root, {"cat": 3, ...}, size=(32, 32), mode="RGB")`` writes a
    tiny image-folder dataset (the layout `jaxode.data.folder` reads)."""
    return _write_image_folder
