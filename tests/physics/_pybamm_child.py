"""PyBaMM's Thevenin model solved in a child process for ``test_pybamm_live.py`` (JSON in on stdin, JSON out on stdout).

PyBaMM imports CasADi, whose shared libraries never load into a JAX test process (see
``physics/battery_charging.py::ipopt_solve``), so the parent runs this module with ``python -m``; nothing here imports
JAX. The input is a list of cases ``{"name", "set", "initial_soc", "current_A", "temperature_K", "t_eval"}`` with
``set`` either ``"ecm_example"`` (PyBaMM's default ``ECM_Example`` parameters) or ``"cell_5Ah"``: the constants of
``physics.cell_5Ah``, its OCV table (passed in ``"ocv_soc"``, ``"ocv_V"``) through PyBaMM's PCHIP ``Interpolant``, and
a jig of 1e12 J/K with no heat transfer to the air, which stays at the ambient temperature and leaves the cell cooled
through ``"Cell-jig heat transfer coefficient [W/K]"`` as the jig-less model is. The output has, per case, the times
(s), terminal voltage (V), cell and jig temperatures (K), SoC, the termination reason and PyBaMM's version.
"""

import json
import sys

import numpy as np


def _solve(case: dict) -> dict:
    import pybamm

    model = pybamm.equivalent_circuit.Thevenin()
    values = model.default_parameter_values
    if case["set"] == "cell_5Ah":
        soc_grid, ocv_table = np.asarray(case["ocv_soc"], float), np.asarray(case["ocv_V"], float)
        values.update(
            {
                "Cell capacity [A.h]": 5.0,
                "Nominal cell capacity [A.h]": 5.0,
                "Open-circuit voltage [V]": lambda soc: pybamm.Interpolant(
                    soc_grid, ocv_table, soc, name="ocv", interpolator="pchip"
                ),
                "R0 [Ohm]": 0.015,
                "R1 [Ohm]": 0.010,
                "C1 [F]": 3000.0,
                "Entropic change [V/K]": 0.0,
                "Cell thermal mass [J/K]": 70.0,
                "Cell-jig heat transfer coefficient [W/K]": 0.25,
                "Jig thermal mass [J/K]": 1e12,  # the jig stays at the ambient temperature: no jig
                "Jig-air heat transfer coefficient [W/K]": 0.0,
                "Lower voltage cut-off [V]": 2.5,
                "Upper voltage cut-off [V]": 4.2,
            }
        )
    elif case["set"] != "ecm_example":
        raise ValueError(f"unknown parameter set {case['set']!r}")
    values.update(
        {
            "Initial SoC": case["initial_soc"],
            "Current function [A]": case["current_A"],
            "Ambient temperature [K]": case["temperature_K"],
            "Initial temperature [K]": case["temperature_K"],
        }
    )
    if hasattr(pybamm, "IDAKLUSolver"):
        solver = pybamm.IDAKLUSolver(rtol=1e-10, atol=1e-10)
    else:  # pragma: no cover - older PyBaMM builds without the IDAKLU extension
        solver = pybamm.CasadiSolver(mode="safe", rtol=1e-10, atol=1e-10)
    sim = pybamm.Simulation(model, parameter_values=values, solver=solver)
    t_eval = np.asarray(case["t_eval"], float)
    solution = sim.solve([t_eval[0], t_eval[-1]], t_interp=t_eval)
    return {
        "name": case["name"],
        "termination": str(solution.termination),
        "t": solution["Time [s]"].entries.tolist(),
        "voltage_V": solution["Voltage [V]"].entries.tolist(),
        "T_cell_K": solution["Cell temperature [K]"].entries.tolist(),
        "T_jig_K": solution["Jig temperature [K]"].entries.tolist(),
        "soc": solution["SoC"].entries.tolist(),
        "pybamm_version": pybamm.__version__,
    }


def main() -> None:
    cases = json.loads(sys.stdin.read())
    print(json.dumps([_solve(case) for case in cases]))


if __name__ == "__main__":
    main()
