"""The probed models: import a factory, build one model per replicate, re-initialize it.

Optional model libraries (torchvision, timm, transformers: the `models` extra) are imported here
and nowhere else, by name (`importlib`), so the core harness never needs them; a missing one is a
one-line ConfigError naming the extra. Nothing is downloaded: the presets build their models
from configs with random initialization, and the Hugging Face libraries are put offline
(HF_HUB_OFFLINE=1, unless the environment says otherwise) before they are first imported.

Compatibility shim (`import_optional`): PyPI's torchvision wheels pairing with a CPU-only torch
may carry a CUDA build of torchvision's C extension; importing torchvision then fails in
`torchvision/_meta_registrations.py` ("operator torchvision::nms does not exist"), because the
extension's operators never registered. Only that module needs them (it registers meta kernels
for detection operators such as nms and roi_align, which classification models never call). So
when, and only when, `import torchvision` fails this way, an empty module stands in for
`torchvision._meta_registrations` and the import is retried; `SHIMS` records that it was used
(the run's metadata lists it).

Replicate r's model is built by the factory under the global torch seed of its own stream
(`stream_seed(seed, r, MODEL)`), so a factory that initializes with torch's global generator
(torchvision, timm, transformers, any nn.Module) gives each replicate an independent network and
the same network for the same seed. An nn.Module instance passed to `harness.probe` is copied
per replicate and its layers' `reset_parameters()` re-run under that seed (torch's default init).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.core import init as inits
from harness.core.validate import ConfigError

#: the extra that provides each optional model library
EXTRAS = {"torchvision": "models", "timm": "models", "transformers": "models"}
#: compatibility shims applied in this process (module name -> why)
SHIMS: dict[str, str] = {}
#: the streams of a replicate: its model, its inputs, its cotangent
MODEL, INPUTS, COTANGENT = 0, 1, 2
_TV_META = "torchvision._meta_registrations"


def stream_seed(seed: int, replicate: int, stream: int) -> int:
    """A 63-bit seed for stream `stream` of replicate r: a SeedSequence hash of (seed, r, stream),
    so replicate r's model, inputs and cotangent do not depend on the others or on R."""
    state = np.random.SeedSequence([seed, replicate, stream]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def generator(seed: int, replicate: int, stream: int, device: str | torch.device) -> torch.Generator:
    """A torch.Generator on `device` seeded with `stream_seed`."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, replicate, stream))


def import_optional(name: str, what: str) -> types.ModuleType:
    """Import module `name` (for `what`, e.g. "model resnet18"); ConfigError naming the extra to
    install if its package is missing. torchvision gets the compatibility shim described in the
    module docstring when, and only when, its C extension cannot load."""
    top = name.split(".")[0]
    if top in ("transformers", "timm", "huggingface_hub"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # presets build from configs: never download
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return _import(name, top)
    except ImportError as e:
        missing = (e.name or "").split(".")[0]
        if missing and missing in EXTRAS:
            raise ConfigError(f"{what} needs {missing}, which is not installed: it is in the "
                              f"'{EXTRAS[missing]}' extra, pip install -e '.[{EXTRAS[missing]}]'") from None
        raise ConfigError(f"{what}: cannot import {name} ({_one_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - a library that fails while importing: one line
        raise ConfigError(f"{what}: importing {name} failed: {type(e).__name__}: {_one_line(e)}") from None


def _import(name: str, top: str) -> types.ModuleType:
    if top in EXTRAS:  # timm and transformers import torchvision themselves when it is installed
        _torchvision()
    return importlib.import_module(name)


def _torchvision() -> None:
    """Import torchvision if it is installed, with the compatibility shim (module docstring)
    when its C extension cannot load; re-raises any other failure."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]  # the half-imported package, before retrying with the shim
        sys.modules[_TV_META] = types.ModuleType(_TV_META)
        SHIMS[_TV_META] = (f"empty stand-in: torchvision's C extension did not load ({_one_line(e)}); "
                           "only detection operators (nms, roi_align) need it")
        importlib.import_module("torchvision")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def resolve(target: str, what: str) -> Callable[..., Any]:
    """The callable at dotted path `target` ("package.module.Factory"); ConfigError (one line)
    if the module is missing (naming the extra for the optional libraries) or has no such name."""
    module, _, attr = target.rpartition(".")
    if not module or not attr:
        raise ConfigError(f"model._target_ must be a dotted path package.module.Factory; got {target!r}")
    mod = import_optional(module, what)
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{what}: {module} has no callable {attr!r}")
    return fn


def build(factory: Callable[..., Any] | nn.Module, args: dict[str, Any], seed: int, replicate: int,
          what: str) -> nn.Module:
    """Replicate r's model: factory(**args) under the global torch seed of its model stream (the
    caller's global generator state is restored); a module instance is deep-copied and its layers'
    reset_parameters() re-run under that seed. ConfigError (one line) if the factory raises or
    returns something other than an nn.Module."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, replicate, MODEL))
        if isinstance(factory, nn.Module):
            model = copy.deepcopy(factory)
            for m in model.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
            return model
        try:
            model = factory(**args)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of user code is one line
            raise ConfigError(f"{what}: the factory raised {type(e).__name__}: {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


#: modules whose `weight` a scheme re-draws: torch's Linear and convolutions, and the Linear with
#: a transposed weight (in, out) that Hugging Face's GPT-2 uses (transformers' Conv1D)
LINEAR = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
          nn.ConvTranspose2d, nn.ConvTranspose3d)
TRANSPOSED = ("Conv1D",)
#: normalization layers: γ = 1, β = 0 under a re-initializing scheme
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
         *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def reinitialize(model: nn.Module, scheme: str, kwargs: dict[str, Any], bias_std: float,
                 g: torch.Generator) -> int:
    """Re-draw every Linear/Conv weight of `model` with `scheme` (torch's fans of its own
    (out, in, *kernel) layout, `harness.core.init.init_`), biases N(0, bias_std²) (0: zero), and
    set normalization layers to γ = 1, β = 0; other parameters (embeddings, position embeddings,
    class tokens) keep the model's own initialization. Returns how many weights were re-drawn."""
    n = 0
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, LINEAR) or type(m).__name__ in TRANSPOSED:
                if not isinstance(w, torch.Tensor):
                    continue
                target = w.T if type(m).__name__ in TRANSPOSED else w
                draw = torch.empty((1, *target.shape), dtype=w.dtype, device=w.device)
                try:
                    inits.init_(draw, scheme, generator=g, **kwargs)
                except ValueError as e:
                    raise ConfigError(f"scheme {scheme} cannot draw the {type(m).__name__} weight of "
                                      f"shape {tuple(target.shape)}: {e}") from None
                target.copy_(draw[0])
                n += 1
                b = getattr(m, "bias", None)
                if isinstance(b, torch.Tensor):
                    if bias_std > 0:
                        b.normal_(0.0, bias_std, generator=g)
                    else:
                        b.zero_()
            elif isinstance(m, NORMS):
                if isinstance(w, torch.Tensor):
                    w.fill_(1.0)
                b = getattr(m, "bias", None)
                if isinstance(b, torch.Tensor):
                    b.zero_()
    return n


def dropout_off(model: nn.Module) -> None:
    """Put every dropout module in eval mode (p has no effect), whatever the model's mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


# ---- preset factories (their libraries imported by name, on first use) ----------------------
def gpt2(n_layer: int = 12, n_embd: int = 768, n_head: int = 12, vocab_size: int = 50257,
         n_positions: int = 1024, lm_head: bool = False, **config: Any) -> nn.Module:
    """Hugging Face GPT-2 from `GPT2Config` (GPT-2 small by default) with random initialization,
    nothing downloaded, dropout 0 (resid, embd, attn); GPT2Model (main output last_hidden_state),
    or GPT2LMHeadModel with lm_head=true (main output logits)."""
    tf = import_optional("transformers", "model gpt2_small")
    kw = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config)
    cfg = tf.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size,
                        n_positions=n_positions, **kw)
    return tf.GPT2LMHeadModel(cfg) if lm_head else tf.GPT2Model(cfg)
