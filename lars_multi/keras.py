r"""LARS as a Keras 3 optimizer: ``lm.keras.LARS(...)``, for ``model.compile`` / ``model.fit``.

The step is the shared rule of :mod:`lars_multi._step` (the one
:func:`lars_multi.optim.lars` runs), applied to each variable on Keras'
TensorFlow, JAX and torch backends with that backend's lars_multi primitives.
Masks are given as variable-name patterns, schedules as Keras
``LearningRateSchedule`` s, so the optimizer serializes with the model:
``model.save("m.keras")`` and ``keras.models.load_model`` restore it with its
momentum buffers (import :mod:`lars_multi.keras` before loading: it registers
the class as ``"lars_multi>LARS"``).

.. code-block:: python

    import keras, lars_multi.keras

    model.compile(
        optimizer=lars_multi.keras.LARS(0.1, weight_decay=1e-4, exclude_from_adaptation=["norm"]),
        loss="mse",
    )

Importing this module without Keras succeeds; using :class:`LARS` then raises
:class:`lars_multi.BackendNotInstalledError`.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
import warnings
from typing import Any

import numpy as np

from . import _checks, optim, schedules
from ._errors import BackendNotInstalledError, LarsMultiTypeError, LarsMultiValueError, type_name
from ._registry import backend_of, get_backend
from ._step import LayerFlags, lars_step, no_zero_decay

try:
    import keras
except ImportError as _error:  # the module imports without Keras; LARS says why it is missing
    keras = None
    _MISSING = str(_error)

__all__ = ["LARS", "Schedule"]
_SCHEDULES = {kind.__name__: kind for kind in (schedules.warmup_polynomial, schedules.warmup_cosine)}
# TF Model Garden's LARS's names for this optimizer's arguments (Keras would refuse them
# with a message that names no argument of ours).
_MODEL_GARDEN_NAMES = {
    "weight_decay_rate": "weight_decay",
    "eeta": "trust_coefficient",
    "exclude_from_layer_adaptation": "exclude_from_adaptation",
    "classic_momentum": "preset='optax' (its classic_momentum=True; there is no other)",
}
# Whether a variable is adapted and decayed, by the code saved for it (and back).
_LAYER_CODES = {(False, False): 0, (True, False): 1, (False, True): 2, (True, True): 3}
_LAYER_FLAGS = {
    code: LayerFlags(adapt=(adapt,), decay=(decay,)) for (adapt, decay), code in _LAYER_CODES.items()
}
# What an optimizer's momentum buffers hold, by the code it saves with its variables.
_HOLDS = {0: "nothing (momentum 0)", 1: "the step eta r u ('paper', 'optax')", 2: "r u ('timm')"}


def _tf() -> Any:
    """TensorFlow, imported once Keras runs on it."""
    import tensorflow

    return tensorflow


def _compute_dtype(dtype: Any) -> str:
    """The dtype a layer of ``dtype`` computes in: float32 for halves, else its own
    (``keras.backend.result_type`` gives float32 for float64 on Keras' torch backend)."""
    name = str(keras.backend.standardize_dtype(dtype))
    return "float32" if name in ("float16", "bfloat16") else name


def _dense(grads: list[Any], variables: list[Any]) -> tuple[list[Any], list[Any]]:
    """The gradients as dense tensors where TensorFlow gave ``tf.IndexedSlices`` (an
    embedding's): summed into their variables' shapes, as Keras' own optimizers take them
    (a LARS step needs the whole gradient's norm), by the TensorFlow backend, which
    refuses a row index outside the variable (a negative one was dropped silently); and
    those sums, which wait on that check in a graph."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not any(isinstance(g, tf.IndexedSlices) for g in grads):
        return grads, []
    ops = get_backend("tensorflow")
    dense, summed = [], []
    for i, (gradient, variable) in enumerate(zip(grads, variables)):
        if isinstance(gradient, tf.IndexedSlices):
            shape = gradient.dense_shape if gradient.dense_shape is not None else tuple(variable.shape)
            try:
                gradient = ops.densify(tf.IndexedSlices(gradient.values, gradient.indices, shape), None)
            except ValueError as error:
                raise LarsMultiValueError(f"grads[{i}] (of {_path(variable)}): {error}") from None
            summed.append(gradient)
        dense.append(gradient)
    return dense, summed


def _after(tensors: list[Any]) -> Any:
    """A context in which every operation made waits on ``tensors`` (in a graph: a step
    whose sparse gradient's rows are refused writes nothing, its step count included)."""
    tf = sys.modules.get("tensorflow")
    if not tensors or tf is None or tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf.control_dependencies(tensors)


def _matches(patterns: list[str], variable: Any) -> bool:
    """Whether a pattern (a substring or a regular expression) occurs in the
    variable's path (``"sequential/dense/kernel"``) or name."""
    names = [
        str(n) for n in (getattr(variable, "path", None), getattr(variable, "name", None)) if n is not None
    ]
    return any(p in n or _search(p, n) for p in patterns for n in names)


def _search(pattern: str, name: str) -> bool:
    """Whether the regular expression ``pattern`` occurs in ``name``; a pattern that is
    not a regular expression (``"block("``) is a substring only."""
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


if keras is not None:

    @keras.saving.register_keras_serializable(package="lars_multi")
    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        """A :mod:`lars_multi.schedules` schedule as a Keras one: Keras calls it with the
        step, and it is saved with the model (``kind``: the schedule's name)."""

        def __init__(self, kind: str, **arguments: Any) -> None:
            if not isinstance(kind, str) or kind not in _SCHEDULES:
                raise LarsMultiValueError(
                    f"kind: expected one of {', '.join(map(repr, _SCHEDULES))}, got {kind!r}"
                )
            try:
                schedule = _SCHEDULES[kind](**arguments)
            except TypeError as error:  # (missing or unknown arguments)
                raise LarsMultiTypeError(f"{kind}: {error}") from None
            self.kind, self.arguments, self.schedule = kind, arguments, schedule

        def __call__(self, step: Any) -> Any:
            return self.schedule(step)

        def get_config(self) -> dict[str, Any]:
            return {"kind": self.kind, **self.arguments}

        @classmethod
        def from_config(cls, config: dict[str, Any]) -> Schedule:
            if not isinstance(config, dict) or "kind" not in config:
                got = f"keys {sorted(map(str, config))}" if isinstance(config, dict) else type_name(config)
                raise LarsMultiValueError(
                    f"config: expected a dict with the schedule's 'kind' and arguments, got {got}"
                )
            return cls(**config)

    def _keras_schedule(arg: str, value: Any) -> Any:
        """A lars_multi schedule as a :class:`Schedule` (saved with the model by its
        kind and arguments: a subclass of one would be restored as its base, and is
        refused); a number or an array's value as a float, checked; a callable as it is."""
        kind = type(value).__name__
        if _SCHEDULES.get(kind) is type(value):
            return Schedule(kind, **vars(value))
        if isinstance(value, tuple(_SCHEDULES.values())):
            raise LarsMultiTypeError(
                f"{arg}: expected a lars_multi schedule or a keras LearningRateSchedule, got a subclass "
                f"of one ({type_name(value)}), which Keras could not restore; subclass "
                "keras.optimizers.schedules.LearningRateSchedule"
            )
        if callable(value):
            return value
        if _checks.is_number(value):  # (a NumPy scalar as a float: Keras takes Python floats)
            return optim._rate(arg, value)
        if _is_variable(value):
            raise LarsMultiTypeError(
                f"{arg}: expected a number, a 0-d array or a schedule, got a variable "
                f"({type_name(value)}), whose value would be read once, here; "
                + (
                    "set optimizer.learning_rate as training goes, or give a schedule"
                    if arg == "learning_rate"
                    else "give a schedule"
                )
            )
        number = None
        if _checks.owner(value) is not None or isinstance(value, np.ndarray):
            with contextlib.suppress(TypeError, ValueError):  # (a 0-d array: its value, read once)
                number = float(keras.ops.convert_to_numpy(value))
        if number is None:
            raise LarsMultiTypeError(
                f"{arg}: expected a number, a 0-d array or a schedule, got {type_name(value)}"
            )
        return optim._rate(arg, number)

    def _is_variable(value: Any) -> bool:
        """Whether ``value`` is a Keras or TensorFlow variable (meant to change)."""
        tf = sys.modules.get("tensorflow")
        return isinstance(value, keras.Variable) or (tf is not None and isinstance(value, tf.Variable))

    def _path(variable: Any) -> str:
        """A variable's path (``"sequential/dense/kernel"``); a TensorFlow variable's name."""
        return str(getattr(variable, "path", variable.name))

    # exclude_from_weight_decay's arguments, in get_config
    _EXCLUDED = "exclude_from_weight_decay_call"

    # The step's hyper-parameters, fixed once the optimizer is made (a compiled
    # ``model.fit`` traces the step with them). Keras' own decoupled weight decay
    # (``weight_decay``) is not LARS's, and stays off.
    _FIXED = frozenset(
        {
            "momentum",
            "nesterov",
            "dampening",
            "weight_decay",
            "lars_weight_decay",
            "trust_coefficient",
            "eps",
            "trust_clip",
            "always_adapt",
            "preset",
            "exclude_from_adaptation",
            "exclude_from_adaptation_patterns",
            "exclude_from_weight_decay",  # (Keras' method: an attribute set over it was ignored)
            "exclude_from_weight_decay_patterns",
        }
    )

    def _check_rate(arg: str, value: Any) -> None:
        """Keras calls a callable learning rate with no argument (a schedule: with the
        step), and so does this optimizer its weight decay: a function of the step
        count, as lars_multi.optim takes, is refused."""
        if not callable(value) or isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
            return
        try:
            inspect.signature(value).bind()
        except TypeError:
            raise LarsMultiTypeError(
                f"{arg}: expected a number, a keras LearningRateSchedule, a lars_multi schedule "
                "or a callable of no arguments (Keras calls it so), got a callable that needs arguments; "
                "wrap a function of the step in a keras.optimizers.schedules.LearningRateSchedule"
            ) from None
        except ValueError:  # (no signature: Keras will tell)
            return

    def _checked_value(arg: str, rate: Any, value: Any) -> Any:
        """The ``value`` a schedule or callable ``rate`` gave, checked where it is a
        number (an array is not read, as in lars_multi.optim)."""
        if not _checks.is_number(value) or not callable(rate):
            return value
        schedule = isinstance(rate, keras.optimizers.schedules.LearningRateSchedule)
        return _checks.check_rate_number(f"{arg}(iterations)" if schedule else f"{arg}()", value)

    def _check_distinct(variables: list[Any]) -> None:
        """A variable given twice would share its momentum buffer between two updates."""
        if len(set(map(id, variables))) == len(variables):
            return
        seen: set[int] = set()
        for variable in variables:
            if id(variable) in seen:
                raise LarsMultiValueError(
                    f"trainable_variables: expected distinct variables, got {_path(variable)} twice"
                )
            seen.add(id(variable))

    @keras.saving.register_keras_serializable(package="lars_multi")
    class LARS(keras.optimizers.Optimizer):
        """LARS (You, Gitman and Ginsburg, 2017) as a Keras 3 optimizer.

        Args:
            learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule``,
                or a :mod:`lars_multi.schedules` schedule (made a :class:`Schedule`).
            momentum, nesterov, dampening, trust_coefficient, eps, trust_clip,
            always_adapt, preset: as :func:`lars_multi.optim.lars`.
            weight_decay: LARS's weight decay :math:`\\lambda` (inside the trust
                ratio), a float or a schedule of the iteration, as ``learning_rate``.
                Keras' decoupled weight decay is not used.
            exclude_from_adaptation, exclude_from_weight_decay: name patterns
                (substrings or regular expressions, matched against
                ``variable.path`` and ``variable.name``) of variables that are
                not adapted, not decayed. They narrow the preset's default
                (``"paper"``: variables with more than one dimension;
                ``"optax"``, ``"timm"``: every variable).
                :meth:`exclude_from_weight_decay` also narrows the decay (its names as
                Keras reads them: regular expressions searched in ``variable.name``).
                Which variables are adapted and decayed is saved with the optimizer's
                state, and an optimizer ``keras.models.load_model`` makes takes it from
                there (the variables' paths change on loading; the variables of
                ``var_list`` are in no config); into another optimizer a state of other
                choices is not loaded (Keras' warning).
            name, **kwargs: as ``keras.optimizers.Optimizer`` (``clipnorm``,
                ``global_clipnorm``, ``use_ema``, ``loss_scale_factor``, ...).
        """

        def __init__(
            self,
            learning_rate: Any = 0.01,
            momentum: float = 0.9,
            nesterov: bool = False,
            dampening: float = 0.0,
            weight_decay: Any = 0.0,
            trust_coefficient: float = 0.001,
            eps: float | None = None,
            trust_clip: bool = False,
            always_adapt: bool = False,
            exclude_from_adaptation: Any = None,
            exclude_from_weight_decay: Any = None,
            preset: str = "paper",
            name: str = "lars",
            **kwargs: Any,
        ) -> None:
            foreign = next((name for name in _MODEL_GARDEN_NAMES if name in kwargs), None)
            if foreign is not None:
                raise LarsMultiTypeError(
                    f"{foreign}: TF Model Garden's name; lm.keras.LARS takes {_MODEL_GARDEN_NAMES[foreign]}"
                )
            learning_rate = _keras_schedule("learning_rate", learning_rate)
            _check_rate("learning_rate", learning_rate)
            decay = 0.0 if weight_decay is None else _keras_schedule("weight_decay", weight_decay)
            _check_rate("weight_decay", decay)
            # Checks every hyper-parameter and makes the rule's configuration.
            checked = optim.lars(
                learning_rate if _checks.is_number(learning_rate) else 0.0,  # (a schedule: Keras')
                momentum=momentum,
                nesterov=nesterov,
                dampening=dampening,
                weight_decay=0.0 if callable(decay) else decay,  # (Keras calls it with no argument)
                trust_coefficient=trust_coefficient,
                eps=eps,
                trust_clip=trust_clip,
                always_adapt=always_adapt,
                preset=preset,
            )
            super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
            self._lars_config = checked.config
            self._lars_learning_rate = checked.learning_rate  # (0.0 for a schedule: Keras')
            self.lars_weight_decay = decay if callable(decay) else checked.weight_decay
            self.momentum = checked.config.momentum
            self.nesterov = nesterov
            self.dampening = checked.config.dampening
            self.trust_coefficient = checked.config.trust_coefficient
            self.eps = None if eps is None else checked.config.eps  # (None: the preset's; a float, saved)
            self.trust_clip = trust_clip
            self.always_adapt = always_adapt
            self.preset = preset
            self.exclude_from_adaptation_patterns = _checks.check_name_patterns(
                "exclude_from_adaptation", exclude_from_adaptation
            )
            self.exclude_from_weight_decay_patterns = _checks.check_name_patterns(
                "exclude_from_weight_decay", exclude_from_weight_decay
            )
            self._excluded_names: list[str] = []  # exclude_from_weight_decay(var_names=...)
            self._excluded_ids: frozenset[int] = frozenset()  # exclude_from_weight_decay(var_list=...)
            self._from_config = False  # (made by from_config: see load_own_variables)
            self._lars_made = True

        def __setattr__(self, name: str, value: Any) -> None:
            """The step's hyper-parameters cannot be set once the optimizer is made: set
            later, they were ignored while training, then saved by ``get_config`` (and
            ``weight_decay`` turned Keras' decoupled decay on beside LARS's)."""
            if name in _FIXED and self.__dict__.get("_lars_made", False):
                raise LarsMultiValueError(
                    f"{name}: expected to be set when the optimizer is made (the step is traced with "
                    f"it), got a new value later; make a new lm.keras.LARS, or give learning_rate or "
                    f"weight_decay a schedule"
                )
            super().__setattr__(name, value)

        def build(self, var_list: list[Any]) -> None:
            """Momentum buffers (none when momentum is 0) and each variable's flags."""
            if self.built:
                return
            ops = get_backend(keras.backend.backend())
            for variable in var_list:  # (an int variable failed after the others were written)
                _checks.check_weights(_path(variable), _checks.unwrap(variable), ops)
            self._check_fits(var_list)
            super().build(var_list)
            default = self._lars_config.preset.default_mask
            self._lars_flags = []
            for variable in var_list:
                included = bool(default(_path(variable), variable))
                adapt = included and not _matches(self.exclude_from_adaptation_patterns, variable)
                decay = (
                    included
                    and not _matches(self.exclude_from_weight_decay_patterns, variable)
                    and self._use_weight_decay(variable)
                )
                self._lars_flags.append(LayerFlags(adapt=(adapt,), decay=(decay,)))
            # What the buffers hold, in a variable of its own, then timm's flags, then the buffers:
            # a state saved by another optimizer laid out alike (Keras SGD's), or by a preset whose
            # buffers hold something else, is not loaded into them (Keras' files pair variables by
            # count and place, which these change; tf.train.Checkpoint by place, where a scalar
            # then meets a buffer's shape and the restore fails).
            hold = keras.initializers.Constant(self._buffers_code)
            self._lars_buffers_hold = self.add_variable((), hold, dtype="int32", name="lars_buffers")
            # Which variables are adapted and decayed, decided now from the names and paths,
            # saved with the buffers: paths change on loading (keras.models.load_model drops a
            # nested model's name), and the variables of exclude_from_weight_decay(var_list=...)
            # are not in the config, so a loaded optimizer takes them from here.
            codes = keras.initializers.Constant(self._layer_codes())
            self._lars_layers = self.add_variable((len(var_list),), codes, dtype="int32", name="lars_layers")
            # timm starts a buffer at r u on its variable's first update (a variable may get
            # its first gradient late): one flag per variable, 1 once started.
            self._lars_started = []
            if self._lars_config.tracks_start:
                self._lars_started = [
                    self.add_variable((), dtype="float32", name=f"lars_started_{i}")
                    for i in range(len(var_list))
                ]
            self.momentums = []
            if self.momentum != 0:
                self.momentums = [self.add_variable_from_reference(v, "momentum") for v in var_list]

        @property
        def _buffers_code(self) -> int:
            """What the momentum buffers hold: 0 none, 1 the step eta r u, 2 r u."""
            if self.momentum == 0:
                return 0
            return 1 if self._lars_config.preset.lr_in_buffer else 2

        def _layer_codes(self) -> list[int]:
            """Each variable's flags (adapted, decayed) as the code saved for them."""
            return [_LAYER_CODES[f.adapt[0], f.decay[0]] for f in self._lars_flags]

        def _kept(self) -> dict[int, np.ndarray]:
            """The values saved for what the buffers hold and which variables are adapted
            and decayed, by their variables' ids: this optimizer's own (tf.train.Checkpoint,
            which pairs variables by place, may have put another optimizer's in them)."""
            return {
                id(self._lars_buffers_hold): np.array(self._buffers_code, "int32"),
                id(self._lars_layers): np.array(self._layer_codes(), "int32"),
            }

        def save_own_variables(self, store: Any) -> None:
            """Keras' saving (each variable by its place), with this optimizer's codes."""
            kept = self._kept() if self.built else {}
            for i, variable in enumerate(self.variables):
                store[str(i)] = kept[id(variable)] if id(variable) in kept else variable.numpy()

        def load_own_variables(self, store: Any) -> None:
            """Keras' loading (by count and place), where the state saved says its buffers
            hold what this optimizer's do: else it is skipped with Keras' warning, as Keras
            skips a state of another count (or an optimizer not built yet). The variables'
            flags (adapted, decayed) are then the saved ones."""
            if not self.built or len(store.keys()) != len(self.variables):
                super().load_own_variables(store)
                return
            places = {id(v): i for i, v in enumerate(self.variables)}
            code = np.asarray(store[str(places[id(self._lars_buffers_hold)])])
            codes = np.asarray(store[str(places[id(self._lars_layers)])])
            saved_code = int(code) if code.shape == () and code.dtype.kind == "i" else -1  # (-1: no code)
            fits = (
                codes.shape == (len(self._lars_flags),)
                and codes.dtype.kind == "i"
                and set(codes.tolist()) <= set(_LAYER_FLAGS)
            )
            if saved_code != self._buffers_code or not fits:
                reason = (
                    f"the saved optimizer's hold {_HOLDS.get(saved_code, 'something else')}"
                    if saved_code != self._buffers_code
                    else f"the saved flags are not those of {len(self._lars_flags)} variables"
                )
                warnings.warn(
                    f"Skipping variable loading for optimizer '{self.name}', whose momentum buffers hold "
                    f"{_HOLDS[self._buffers_code]}, because {reason}",
                    stacklevel=2,
                )
                return
            saved = [_LAYER_FLAGS[c] for c in codes.tolist()]
            if saved != self._lars_flags and not self._loading_its_model():
                warnings.warn(
                    f"Skipping variable loading for optimizer '{self.name}', because the saved state's "
                    "variables are adapted or decayed otherwise than this optimizer's (other settings, or "
                    "other variables at those places)",
                    stacklevel=2,
                )
                return
            super().load_own_variables(store)
            self._lars_flags = saved

        def _loading_its_model(self) -> bool:
            """Whether this optimizer was made from a saved config and has not stepped:
            ``keras.models.load_model`` loading the state saved with it, whose choices of
            adapted and decayed variables are the right ones (its patterns were matched
            against the paths before saving; its ``var_list`` is in no config)."""
            fresh = int(keras.ops.convert_to_numpy(self.iterations)) == 0
            return self._from_config and fresh

        @property
        def learning_rate(self) -> Any:
            """Keras' rate now; a number a schedule or callable gives is checked (a
            negative or NaN one stepped uphill, or made NaN weights); an array is not
            read, as in lars_multi.optim."""
            value = super().learning_rate
            return _checked_value("learning_rate", self._learning_rate, value)

        @learning_rate.setter
        def learning_rate(self, value: Any) -> None:
            """Set as Keras' callbacks set it, a number checked as the constructor checks
            it (a NaN or negative rate refused, not stepped with)."""
            value = _keras_schedule("learning_rate", value)
            _check_rate("learning_rate", value)
            number = _checks.is_number(value)
            if number:
                value = optim._rate("learning_rate", value)
                if self.built:
                    self._check_fits(self._trainable_variables, learning_rate=value)
            keras.optimizers.Optimizer.learning_rate.fset(self, value)
            if number:
                self._lars_learning_rate = value

        def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
            """Keras' ``apply``, every gradient's shape checked against its variable's
            first: a gradient that broadcasts to it would be stepped with the norm of
            its own few values, and one that does not would fail after the variables
            before it were written."""
            grads = list(grads)
            variables = (
                getattr(self, "_trainable_variables", None)
                if trainable_variables is None
                else list(trainable_variables)
            )
            if variables is not None:
                _check_distinct(variables)
            summed: list[Any] = []
            if variables is not None and len(variables) == len(grads):
                grads, summed = _dense(grads, variables)
                for i, (gradient, variable) in enumerate(zip(grads, variables)):
                    shape = getattr(gradient, "shape", None)
                    if shape is not None:
                        _checks.check_shape(f"grads[{i}]", shape, _path(variable), variable.shape)
            if summed and not self.built and variables is not None:
                # Built as Keras builds it, but before the wait on the sums: XLA cannot
                # lift variables made under it out of a compiled train step.
                with keras.name_scope(self.name, caller=self):
                    self.build(variables)  # (Keras' build marks it built)
            with _after(summed):
                return super().apply(grads, trainable_variables)

        def exclude_from_weight_decay(self, var_list: Any = None, var_names: Any = None) -> None:
            """Keras' method, refused once the optimizer is built (each variable's decay
            is fixed then; called later, it was ignored)."""
            if self.built:
                raise LarsMultiValueError(
                    "exclude_from_weight_decay: expected a call before the optimizer is built (at its "
                    "first step), got one after; pass exclude_from_weight_decay= when making it"
                )
            super().exclude_from_weight_decay(var_list, var_names)
            # Kept for get_config too (Keras saves no record of the call: a model loaded from
            # model.save went on decaying those variables): the names as Keras takes them, the
            # variables by their places among those built (paths can repeat: a nested model's
            # variables are named without it). A call replaces the last, as Keras' does.
            self._excluded_names = list(var_names or ())
            self._excluded_ids = frozenset(map(id, var_list or ()))  # (ids: a variable kept here is tracked)

        def _check_fits(self, var_list: list[Any], learning_rate: Any = None) -> None:
            """The numbers among the hyper-parameters (``learning_rate``: the one to be
            set, else the current one) must be finite in the dtype each variable
            computes in (``1e39`` is inf in float32), as lars_multi.optim's are."""
            ops = get_backend(keras.backend.backend())
            arrays = _checks.unwrap_all(var_list)
            rates = [
                ("learning_rate", self._lars_learning_rate if learning_rate is None else learning_rate),
                ("weight_decay", self.lars_weight_decay),
            ]  # (a schedule's values are checked as it goes)
            numbers = [(name, float(value)) for name, value in rates if _checks.is_number(value)]
            _checks.check_settings_usable(
                numbers, self._lars_config, arrays, lambda k: _path(var_list[k]), ops
            )

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            """One LARS step on one variable, by the shared rule."""
            index = self._get_variable_index(variable)
            dtype = variable.dtype
            # Gradients and rates in the dtype the layer computes in (halves: float32, as on
            # TensorFlow's path), never rounded to a half: a float32 gradient beyond 65504
            # would be inf in float16, and a rate of 2e-8 would be 0.
            compute = _compute_dtype(dtype)
            w = keras.ops.stop_gradient(keras.ops.convert_to_tensor(variable))
            g = keras.ops.cast(keras.ops.convert_to_tensor(gradient), compute)
            momentum = self.momentums[index] if self.momentums else None
            buffer = None if momentum is None else keras.ops.convert_to_tensor(momentum)
            lr = keras.ops.cast(learning_rate, compute)
            decay = no_zero_decay(self._decay())
            if decay is not None and not isinstance(decay, float):
                decay = keras.ops.cast(decay, compute)
            first = self._first([index])
            ops = get_backend(backend_of(w) or keras.backend.backend())
            (new_w,), (new_buffer,) = lars_step(
                ops, self._lars_config, self._lars_flags[index], [w], [g], [buffer], lr, decay, first
            )
            self.assign(variable, new_w)
            if momentum is not None:
                self.assign(momentum, new_buffer)
            self._start([index])

        def _first(self, indices: list[int]) -> Any:
            """Whether each variable's buffer starts now (timm), one traced value per
            variable; False where buffers need no start."""
            if not self._lars_started:
                return False
            return [keras.ops.equal(self._lars_started[i], 0.0) for i in indices]

        def _start(self, indices: list[int]) -> None:
            for i in indices if self._lars_started else ():
                self._lars_started[i].assign(1.0)

        def _backend_update_step(self, grads: list[Any], variables: list[Any], learning_rate: Any) -> None:
            """Every variable in one shared step over the list of layers where Keras runs
            on TensorFlow without a distribution strategy (one ``tf.function`` per dtype
            in eager Keras); else Keras' per-variable :meth:`update_step`."""
            if keras.backend.backend() != "tensorflow" or _tf().distribute.has_strategy():
                super()._backend_update_step(grads, variables, learning_rate)
                return
            tf = _tf()
            indices = [self._get_variable_index(v) for v in variables]
            ws = _checks.unwrap_all(variables)
            # (in each layer's compute dtype: a half's gradient in float32, as in update_step)
            gs = [tf.cast(tf.convert_to_tensor(g), _compute_dtype(w.dtype)) for g, w in zip(grads, ws)]
            buffers = [self.momentums[i].value for i in indices] if self.momentums else [None] * len(ws)
            flags = LayerFlags(
                adapt=tuple(self._lars_flags[i].adapt[0] for i in indices),
                decay=tuple(self._lars_flags[i].decay[0] for i in indices),
            )
            ops = get_backend("tensorflow")
            first = self._first(indices)
            # Keras' rate is a Keras variable (float32), which the backend's cast_like does
            # not know: as a tensor, it is cast to each layer's compute dtype (float64 too).
            lr = tf.convert_to_tensor(learning_rate)
            lars_step(ops, self._lars_config, flags, ws, gs, buffers, lr, self._decay(), first, ws)
            self._start(indices)

        def _decay(self) -> Any:
            """LARS's weight decay now: a number or a schedule's value."""
            decay = self.lars_weight_decay
            if callable(decay):  # as Keras asks the learning rate: a schedule on its clock
                schedule = isinstance(decay, keras.optimizers.schedules.LearningRateSchedule)
                return _checked_value("weight_decay", decay, decay(self._iterations) if schedule else decay())
            return decay

        def get_config(self) -> dict[str, Any]:
            config = super().get_config()
            decay = self.lars_weight_decay
            if callable(decay):
                decay = keras.saving.serialize_keras_object(decay)
            config.update(
                {
                    "momentum": self.momentum,
                    "nesterov": self.nesterov,
                    "dampening": self.dampening,
                    "weight_decay": decay,
                    "trust_coefficient": self.trust_coefficient,
                    "eps": self.eps,
                    "trust_clip": self.trust_clip,
                    "always_adapt": self.always_adapt,
                    "exclude_from_adaptation": list(self.exclude_from_adaptation_patterns),
                    "exclude_from_weight_decay": list(self.exclude_from_weight_decay_patterns),
                    "preset": self.preset,
                }
            )
            if self._excluded_ids and not self.built:
                raise LarsMultiValueError(
                    "exclude_from_weight_decay: expected the optimizer built (by a first step, or "
                    "build(model.trainable_variables)) before it is saved with the variables it "
                    "excludes, which are saved with its state; got it unbuilt"
                )
            if self._excluded_names:  # (the method's names; its variables are in the state)
                config[_EXCLUDED] = {"var_names": self._excluded_names}
            return config

        @classmethod
        def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> LARS:
            config = dict(config)
            if isinstance(config.get("weight_decay"), dict):
                config["weight_decay"] = keras.saving.deserialize_keras_object(
                    config["weight_decay"], custom_objects=custom_objects
                )
            excluded = config.pop(_EXCLUDED, None)
            optimizer = super().from_config(config, custom_objects=custom_objects)
            optimizer._from_config = True
            if excluded is not None and excluded["var_names"]:
                optimizer.exclude_from_weight_decay(var_names=excluded["var_names"])
            if excluded is not None and excluded.get("var_places"):  # (saved by 0.3.18 or earlier)
                warnings.warn(
                    "exclude_from_weight_decay: the variables excluded by var_list are not restored from "
                    "a model saved by lars_multi 0.3.18 or earlier (saved by their places, which loading "
                    "can move); its optimizer state is skipped too: exclude them again",
                    stacklevel=2,
                )
            return optimizer

else:

    def __getattr__(name: str) -> Any:
        if name in __all__:
            raise BackendNotInstalledError(
                f"lars_multi.keras.{name} needs Keras 3, which cannot be imported here ({_MISSING}); "
                'install it with: pip install "lars-multi[tensorflow]" (or pip install keras)'
            )
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
