"""Published DFT-D3(BJ) parameters: per-functional damping parameters and the D3 reference tables.

- :data:`D3BJ_FUNCTIONALS`: ``s6, s8, a1, a2`` of the rational (Becke-Johnson) damping per functional,
  as published (Grimme, Ehrlich & Goerigk, J. Comput. Chem. 32, 1456 (2011) and the later papers that
  simple-dftd3's ``parameters.toml`` cites); ``a2`` in bohr. ``tests/test_dispersion.py`` checks every
  entry against that file of the installed ``dftd3`` package.
- :func:`d3_reference_tables`: reference C6 coefficients with their reference coordination numbers,
  covalent radii for the coordination number, ``sqrt(<r4>/<r2>)`` expectation values for C8, and the
  pair van der Waals radii of the three-body damping (Grimme et al., J. Chem. Phys. 132, 154104 (2010)),
  read from the MIT-licensed ``dftd3_params.npz`` shipped with ``torch-dftd`` and converted to Å and eV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.units import Bohr, Hartree

from mpnn_ip.errors import ConfigError

#: functional -> (s6, s8, a1, a2 in bohr) of D3(BJ); keys are lower case, as simple-dftd3 spells them.
D3BJ_FUNCTIONALS: dict[str, tuple[float, float, float, float]] = {
    "pbe": (1.0, 0.7875, 0.4289, 4.4407),
    "pbe0": (1.0, 1.2177, 0.4145, 4.8593),
    "pbesol": (1.0, 2.9491, 0.4466, 6.1742),
    "revpbe": (1.0, 2.3550, 0.5238, 3.5016),
    "revpbe0": (1.0, 1.7588, 0.4679, 3.7619),
    "rpbe": (1.0, 0.8318, 0.1820, 4.0094),
    "pw91": (1.0, 1.9598, 0.6319, 4.5718),
    "rpw86pbe": (1.0, 1.3845, 0.4613, 4.5062),
    "hse06": (1.0, 2.3100, 0.3830, 5.6850),
    "scan": (1.0, 0.0, 0.5380, 5.4200),
    "r2scan": (1.0, 0.78981345, 0.49484001, 5.73083694),
    "r2scan0": (1.0, 1.1846, 0.4534, 5.8972),
    "tpss": (1.0, 1.9435, 0.4535, 4.4752),
    "tpss0": (1.0, 1.2576, 0.3768, 4.5865),
    "blyp": (1.0, 2.6996, 0.4298, 4.2359),
    "bp": (1.0, 3.2822, 0.3946, 4.8516),
    "b3lyp": (1.0, 1.9889, 0.3981, 4.4211),
    "b3pw91": (1.0, 2.8524, 0.4312, 4.4693),
    "b97d": (1.0, 2.2609, 0.5545, 3.2297),
    "pw6b95": (1.0, 0.7257, 0.2076, 6.3750),
    "b2plyp": (0.64, 0.9147, 0.3065, 5.0570),
    "wb97x": (1.0, 0.2641, 0.0, 5.4959),
    "hf": (1.0, 0.9171, 0.3385, 2.8830),
}

#: Largest atomic number with D3 reference data (Pu).
MAX_ATOMIC_NUMBER = 94
#: Most reference systems of one element.
MAX_REFERENCES = 5


def d3bj_parameters(functional: str) -> tuple[float, float, float, float]:
    """``(s6, s8, a1, a2 in bohr)`` of D3(BJ) for ``functional`` (any case); unknown names raise ``ConfigError``."""
    key = functional.lower()
    if key not in D3BJ_FUNCTIONALS:
        raise ConfigError(
            f"no D3(BJ) parameters for functional {functional!r}; known: {', '.join(sorted(D3BJ_FUNCTIONALS))}"
        )
    return D3BJ_FUNCTIONALS[key]


def _reference_file() -> Path:
    try:
        import torch_dftd
    except ImportError as error:
        raise ConfigError(
            "D3 dispersion reads its reference C6 table from the torch-dftd package, which is not installed: "
            "pip install --no-deps torch-dftd==0.5.3 (or `make install`)"
        ) from error
    return Path(torch_dftd.__file__).parent / "nn" / "params" / "dftd3_params.npz"


def d3_reference_tables() -> dict[str, torch.Tensor]:
    """The D3 reference data in Å and eV, float64, indexed by atomic number (row 0 unused).

    Returns:
        ``c6_reference [95, 95, 5, 5]`` eV Å⁶: C6 of reference a of element Zi with reference b of Zj
        (0 where a reference does not exist); ``cn_reference [95, 5]`` coordination number of each
        reference; ``reference_exists [95, 5]`` bool; ``covalent_radius [95]`` Å (already scaled by
        4/3); ``r4_over_r2 [95]`` Å, ``sqrt(0.5 <r4>/<r2> sqrt(Z))`` so that C8 = 3 C6 q_i q_j;
        ``vdw_radius [95, 95]`` Å, the pair radius R0 of the three-body damping.
    """
    with np.load(_reference_file()) as data:
        c6ab = torch.from_numpy(data["c6ab"]).to(torch.float64)  # [95, 95, 5, 5, (c6, cn_i, cn_j)], bohr/Hartree
        r0ab = torch.from_numpy(data["r0ab"]).to(torch.float64)
        rcov = torch.from_numpy(data["rcov"]).to(torch.float64)
        r2r4 = torch.from_numpy(data["r2r4"]).to(torch.float64)
    # A missing reference is -1 in every field; the diagonal block lists each element's own references.
    exists = c6ab[..., 0] >= 0
    diagonal = torch.arange(c6ab.shape[0])
    reference_exists = exists[diagonal, diagonal, :, 0]
    cn_reference = torch.where(reference_exists, c6ab[diagonal, diagonal, :, 0, 1], torch.zeros(()))
    c6_reference = torch.where(exists, c6ab[..., 0], torch.zeros(())) * Hartree * Bohr**6
    return {
        "c6_reference": c6_reference,
        "cn_reference": cn_reference,
        "reference_exists": reference_exists,
        "covalent_radius": rcov * Bohr,
        "r4_over_r2": r2r4 * Bohr,
        "vdw_radius": r0ab * Bohr,
    }
