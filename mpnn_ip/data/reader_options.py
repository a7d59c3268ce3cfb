"""How data files are read, in one object: the key of every label and the options that are not labels.

:class:`ReaderOptions` is what :func:`~mpnn_ip.data.read_dataset`, the data module, ``mpnn-preprocess``
(:func:`~mpnn_ip.data.store_writer.write_store`) and ``mpnn-check-data`` take. Users and configs give
it as flat keywords, the same in every place (``data.energy_key``, ``data.stress_unit`` ...):

    <label>_key   key of each row of the label table (``energy_key``, ``forces_key``, ``stress_key``,
                  ``dipole_key``, the inputs' ``charge_key`` and ``spin_key``, and ``<name>_key`` of every
                  row given to :func:`~mpnn_ip.outputs.register_label`); ``None`` = do not read it
    label_keys    ``{label: key}``, the same as a mapping (the mapping wins where both are given)
    stress_unit, stress_sign, virial_key, index, format   see :class:`ReaderOptions`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from mpnn_ip.data.units import check_stress_sign, stress_unit_factor
from mpnn_ip.errors import ConfigError
from mpnn_ip.outputs import LABELS

#: The options that are not label keys (the fields of :class:`ReaderOptions` besides ``label_keys``).
OTHER_OPTIONS = ("stress_unit", "stress_sign", "virial_key", "index", "format")


@dataclass(frozen=True)
class ReaderOptions:
    """The reading options of data files, validated when built.

    Args:
        label_keys: ``{label or input: key}`` in ``atoms.info`` / ``atoms.arrays`` / calculator results,
            ``None`` to skip it; one not given gets its default key (``LabelSpec.key``: ``energy``, ``forces``,
            ``stress``, ``dipole``, ``charge``, ``spin``). Held as a read-only mapping of every row.
        stress_unit: unit of the stored stress: ``eV/A^3`` (also ``eV/Å^3``, ``eV/Ang^3``), ``GPa``, ``kbar``, ``bar``.
        stress_sign: ``1`` if positive stored stress is tensile (ASE), ``-1`` if positive is compressive.
        virial_key: virial (eV, Voigt 6, 9 or 3×3) key; where a frame has it, its stress is
            ``-virial / volume`` and the stress key is not used for that frame. ``None`` = no virial.
        index: ASE frame selection (``":"`` all, ``"0:100"``, ``-1``, ...).
        format: ASE format name; ``None`` = guess from the file name/content.

    Raises:
        ConfigError: an unknown label, a key that is not a string or None, an unknown stress unit, a
            stress sign other than 1 and -1.
    """

    label_keys: Mapping[str, str | None] = field(default_factory=dict)
    stress_unit: str = "eV/A^3"
    stress_sign: int = 1
    virial_key: str | None = None
    index: str | int | slice = ":"
    format: str | None = None

    def __post_init__(self):
        given = dict(self.label_keys or {})
        unknown = sorted(set(given) - set(LABELS))
        if unknown:
            raise ConfigError(
                f"label_keys: unknown label(s) {', '.join(unknown)}; the labels and inputs are {', '.join(LABELS)}"
            )
        keys = {name: given.get(name, spec.key) for name, spec in LABELS.items()}
        for name, key in {**keys, "virial": self.virial_key}.items():
            if key is not None and not isinstance(key, str):
                raise ConfigError(f"{name}_key must be a key name (a string) or null, got {key!r}")
        object.__setattr__(self, "label_keys", MappingProxyType(keys))
        stress_unit_factor(self.stress_unit)
        check_stress_sign(self.stress_sign)

    @staticmethod
    def keywords() -> tuple[str, ...]:
        """The flat keyword names accepted by :meth:`from_keywords` (``energy_key`` ..., ``label_keys``, ``stress_unit`` ...)."""
        return (*(spec.option for spec in LABELS.values()), "label_keys", *OTHER_OPTIONS)

    @classmethod
    def from_keywords(cls, **keywords) -> ReaderOptions:
        """The options of flat keywords (those of :meth:`keywords`); any other is a ``ConfigError`` listing them."""
        unknown = sorted(set(keywords) - set(cls.keywords()))
        if unknown:
            raise ConfigError(f"unknown reading option(s) {', '.join(unknown)}; options: {', '.join(cls.keywords())}")
        return cls.from_config(keywords)

    @classmethod
    def from_config(cls, config: Mapping) -> ReaderOptions:
        """The options among the keys of ``config`` (e.g. a whole ``data`` config); other keys are ignored."""
        mapped = dict(config.get("label_keys") or {})
        label_keys = {spec.name: config[spec.option] for spec in LABELS.values() if spec.option in config}
        label_keys.update(mapped)  # the mapping wins: a config's flat keys are mostly defaults
        return cls(label_keys, **{name: config[name] for name in OTHER_OPTIONS if name in config})

    @classmethod
    def coerce(cls, options: ReaderOptions | Mapping | None) -> ReaderOptions:
        """``options`` itself, or the options of a mapping of flat keywords (``None`` = the defaults)."""
        if isinstance(options, ReaderOptions):
            return options
        return cls.from_keywords(**dict(options or {}))

    def key(self, label: str) -> str | None:
        """The key of ``label`` in a file (``None``: not read)."""
        return self.label_keys[label]

    def source_keys(self) -> dict[str, str | None]:
        """``{source: key}`` of everything looked up in a frame: every label, then ``virial``."""
        return {**self.label_keys, "virial": self.virial_key}

    @staticmethod
    def default_key(source: str) -> str | None:
        """The key a source has when the user does not choose one (``virial``: none)."""
        return LABELS[source].key if source in LABELS else None

    @property
    def stress_scale(self) -> float:
        """eV/Å³ (ASE sign) per unit of stored stress: ``stress_sign`` times the size of ``stress_unit``."""
        return self.stress_sign * stress_unit_factor(self.stress_unit)

    def as_settings(self) -> dict:
        """The flat keywords of these options (``energy_key`` ..., ``stress_unit`` ...): the store's manifest
        and ``mpnn-check-data``'s report record them."""
        settings = {LABELS[name].option: key for name, key in self.label_keys.items()}
        settings.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "label_keys"})
        return settings
