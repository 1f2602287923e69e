# Subprocesses that run Python (`python -c`, `python -m`) must not start in the checkout: the
# source tree's asap_fast (without its compiled _core) would shadow the installed package. Give
# them cwd=tmp_path.
import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cot_traces() -> list[dict]:
    """The 294 real reasoning traces bundled with the package (asap_fast/data/README.md)."""
    from asap_fast.data import read_cot_traces

    return read_cot_traces()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random Qwen2 scorer and its BPE tokenizer saved to disk, for the real loading path."""
    from asap_fast.testing import tiny_causal_lm, tiny_tokenizer

    path = tmp_path_factory.mktemp("scorer")
    tokenizer = tiny_tokenizer(vocab_size=800)
    model = tiny_causal_lm(len(tokenizer), hidden=32, layers=1, max_position_embeddings=16384, seed=3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP threads that spin on a busy
    2-core machine make their tests 5-10x slower; the previous setting is restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
