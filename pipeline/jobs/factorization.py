"""Jobs of tensor component analysis and of the dynamic functional connectome."""

from __future__ import annotations

import fnmatch
import logging
import time
from pathlib import Path

import numpy as np
import zarr

from pipeline import layout
from pipeline.analyses.connectome import affinity, communities
from pipeline.analyses.factorization import degenerate_pairs, replicate_similarity
from pipeline.analyses.tca import (
    TCAFit,
    fit_tca,
    pooled_variance,
    scale_units,
    spread_indices,
    top_units,
    unit_variance,
)
from pipeline.backend import get_namespace, to_device, to_numpy
from pipeline.errors import StoreError
from pipeline.jobs import (
    SEQUENCE_MODES,
    analysed_stimuli,
    forward_order,
    provenance_order,
    store_provenance,
    warnings_named,
    write_json,
)
from pipeline.results import Result, read, write_result
from pipeline.store import open_group

log = logging.getLogger(__name__)


def _matching_sites(group: zarr.Group, patterns: list[str]) -> list[str]:
    return [s for s in group.attrs["sites"] if any(fnmatch.fnmatchcase(s, p) for p in patterns)]


def _factor_stimuli(group: zarr.Group, max_stimuli: int) -> np.ndarray:
    """Stimuli a factorization uses: the test split when the set has one, spread evenly up to ``max_stimuli``."""
    index, _ = analysed_stimuli(group)
    return index[spread_indices(len(index), max_stimuli)]


def _stimulus_coords(group: zarr.Group, index: np.ndarray) -> dict:
    return {"stimulus": read(group, "stimulus", index),
            **{name: ("stimulus", read(group, name, index)) for name in ("label", "text") if name in group}}


def _series(stores: list[Path]) -> list[zarr.Group]:
    """The activation stores of a run ordered by training step; all must hold the same stimuli."""
    series = sorted((open_group(s) for s in stores), key=lambda d: provenance_order(d.attrs))
    ids = read(series[0], "stimulus")
    for d in series[1:]:
        if not np.array_equal(read(d, "stimulus"), ids):
            raise StoreError(f"store of checkpoint {d.attrs.get('checkpoint_name')} holds other stimuli than "
                             f"{series[0].attrs.get('checkpoint_name')}; re-extract the run with one stimulus set")
    return series


def _position_mean(X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(stimulus, position, unit) -> (stimulus, unit): mean over the observed positions."""
    w = mask[:, :, None].astype(X.dtype)
    return np.where(w > 0, X, 0).sum(axis=1) / np.maximum(w.sum(axis=1), 1)


def _position_means(series: list[zarr.Group], site: str, index: np.ndarray, mask: np.ndarray):
    """Each checkpoint's (stimulus, unit) means of a site over the observed positions, read one at a time."""
    for group in series:
        yield _position_mean(read(group, site, index), mask)


def _tca_fit(spec: dict, T: np.ndarray, mask: np.ndarray | None) -> TCAFit:
    """Fit on the configured device; a mask with every entry observed is dropped (the dense solver is faster)."""
    xp = get_namespace(spec["device"])
    T = to_device(T, xp, spec["dtype"])
    M = None if mask is None or mask.all() else to_device(np.ascontiguousarray(mask), xp)
    if spec["normalize"]:
        T, _ = scale_units(T, M)
    return fit_tca(T, spec["max_rank"], replicates=spec["replicates"], nonneg=spec["nonneg"], mask=M,
                   n_iter_max=spec["n_iter_max"], tol=spec["tol"], holdout=spec["holdout"], random_state=spec["seed"])


def _tca_dataset(fit: TCAFit, dims: tuple[str, ...], coords: dict) -> Result:
    """Factors of the chosen model (``<dim>_factor`` (dim, component), ``weight``, ``size`` on the fitted entries)
    and the rank diagnostics."""
    ranks = fit.ensemble.ranks
    data = {f"{dim}_factor": ((dim, "component"), to_numpy(f)) for dim, f in zip(dims, fit.model.factors)}
    data["weight"] = (("component",), to_numpy(fit.model.weights))
    data["size"] = (("component",), to_numpy(fit.sizes))
    data["objective"] = (("rank", "replicate"), np.stack([fit.ensemble.objectives[r] for r in ranks]))
    data["similarity"] = (("rank", "replicate"), np.stack([fit.ensemble.similarities[r] for r in ranks]))
    if fit.cv is not None:
        data["cv_train_error"] = (("rank", "replicate"), np.stack([fit.cv.train_error[r] for r in ranks]))
        data["cv_test_error"] = (("rank", "replicate"), np.stack([fit.cv.test_error[r] for r in ranks]))
    return Result(data, {"rank": np.asarray(ranks), "component": np.arange(fit.rank), **coords},
                  {"rank": fit.rank, "nonneg": fit.nonneg, "rel_error": fit.model.rel_error})


def _tca_summary(fit: TCAFit, shape: tuple[int, ...], n_units: int, started: float) -> dict:
    ranks = fit.ensemble.ranks
    cv = None if fit.cv is None else [float(fit.cv.test_error[r][np.argmin(fit.cv.train_error[r])]) for r in ranks]
    return {"status": "ok", "shape": list(shape), "n_units_recorded": n_units, "nonneg": fit.nonneg,
            "rank": fit.rank, "rel_error": fit.model.rel_error, "ranks": ranks,
            "objective": [float(fit.ensemble.objectives[r].min()) for r in ranks],
            "similarity": [replicate_similarity(fit.ensemble.similarities[r], fit.ensemble.objectives[r])
                           for r in ranks],
            "cv_test_error": cv, "degenerate_pairs": [list(p) for p in degenerate_pairs(fit.model)],
            "sweeps": [[f.n_iter for f in fit.ensemble.results[r]] for r in ranks],
            "runtime_seconds": round(time.perf_counter() - started, 3)}


def run_tca(spec: dict, store: Path, out: Path) -> None:
    """TCA of one checkpoint: a (unit x position x stimulus) tensor per selected site, padding masked out.

    Keeps the ``max_units`` units of highest variance, up to ``max_stimuli`` stimuli and the positions
    real in at least ``min_position_coverage`` of them (a position only a few long stimuli reach
    lets components fit those few alone); writes
    the factors and rank diagnostics (result store ``out``, one group per site) and a summary JSON.
    """
    started = time.perf_counter()
    group = open_group(store)
    attrs = group.attrs.asdict()
    index = _factor_stimuli(group, spec["max_stimuli"])
    mask = read(group, "mask", index).astype(bool)
    coverage = mask.mean(axis=0)  # share of the stimuli for which each position is real
    positions = np.flatnonzero((coverage > 0) & (coverage >= spec["min_position_coverage"]))
    rare = int(np.count_nonzero((coverage > 0) & (coverage < spec["min_position_coverage"])))
    mask = mask[:, positions]
    modes = SEQUENCE_MODES.get(attrs.get("stimulus_kind"), ("unit", "position", "stimulus"))
    stim_coords = _stimulus_coords(group, index)
    groups, sites = {}, {}
    for site in _matching_sites(group, spec["sites"]):
        t0 = time.perf_counter()
        try:
            X = read(group, site, index)[:, positions]
            units = top_units(unit_variance(X, mask), spec["max_units"])
            T = np.transpose(X[:, :, units], (2, 1, 0))  # (unit, position, stimulus)
            with warnings_named(f"tca of site {site}"):
                fit = _tca_fit(spec, T, np.broadcast_to(mask.T[None], T.shape))
        except ValueError as err:
            log.warning("tca of site %s failed: %s", site, err)
            sites[site] = {"status": "failed", "error": str(err)}
            continue
        groups[site] = _tca_dataset(fit, ("unit", "position", "stimulus"),
                                    {"unit": units, "position": positions, **stim_coords})
        sites[site] = _tca_summary(fit, T.shape, X.shape[2], t0)
        log.info("tca %s: shape %s, rank %d, error %.3f", site, T.shape, fit.rank, fit.model.rel_error)
    write_result(out, Result(coords=stim_coords, attrs={"analysis": "tca", "store": str(store)}), groups)
    write_json(layout.summary_path(out), {
        "analysis": "tca", "params": spec, "provenance": store_provenance(attrs),
        "modes": ["unit", "position", "stimulus"], "mode_labels": list(modes), "sites": sites,
        "rare_positions_left_out": rare,
        "runtime_seconds": round(time.perf_counter() - started, 3),
    })


def _across_summary(analysis: str, spec: dict, series: list[zarr.Group], sites: dict, started: float) -> dict:
    provenance = [store_provenance(d.attrs.asdict()) for d in series]
    return {
        "analysis": analysis, "params": spec, "provenance": provenance,
        "model": provenance[0].get("model_id"), "run": provenance[0].get("run"),
        "stimulus_set": provenance[0].get("stimulus_set"),
        "checkpoints": [p.get("checkpoint_name") for p in provenance], "steps": [p.get("step") for p in provenance],
        "sites": sites, "site_order": forward_order(provenance),
        "runtime_seconds": round(time.perf_counter() - started, 3),
    }


def _checkpoint_coords(series: list[zarr.Group]) -> dict:
    return {"checkpoint": np.array([d.attrs.get("checkpoint_name", "") for d in series], dtype=str),
            "step": ("checkpoint", np.array([d.attrs.get("step", -1) for d in series], dtype=np.int64))}


def run_tca_across(spec: dict, stores: list[Path], out: Path) -> None:
    """TCA of a run across its checkpoints: a (unit x stimulus x checkpoint) tensor per selected site.

    ``stores`` are the run's activation stores; a site with several positions is averaged over
    its observed positions. The checkpoint factor of a component is its time course over
    training. Writes a result store (one group per site) and its summary JSON beside it.
    """
    started = time.perf_counter()
    series = _series(stores)
    first = series[0]
    index = _factor_stimuli(first, spec["max_stimuli"])
    mask = read(first, "mask", index).astype(bool)
    stim_coords = _stimulus_coords(first, index)
    groups, sites = {}, {}
    for site in _matching_sites(first, spec["sites"]) if len(series) > 1 else []:  # a course needs 2 checkpoints
        t0 = time.perf_counter()
        try:
            # two passes over the checkpoints: memory holds every unit of one checkpoint at a time (wide sites, long
            # series), then the kept units of all
            units = top_units(pooled_variance(_position_means(series, site, index, mask)), spec["max_units"])
            Y = np.stack([m[:, units] for m in _position_means(series, site, index, mask)])
            T = np.transpose(Y, (2, 1, 0))  # (checkpoint, stimulus, unit) -> (unit, stimulus, checkpoint)
            with warnings_named(f"tca across checkpoints of site {site}"):
                fit = _tca_fit(spec, T, None)
        except ValueError as err:
            log.warning("tca across checkpoints of site %s failed: %s", site, err)
            sites[site] = {"status": "failed", "error": str(err)}
            continue
        groups[site] = _tca_dataset(fit, ("unit", "stimulus", "checkpoint"),
                                    {"unit": units, **stim_coords, **_checkpoint_coords(series)})
        sites[site] = _tca_summary(fit, T.shape, Y.shape[2], t0)
        log.info("tca across %s: shape %s, rank %d, error %.3f", site, T.shape, fit.rank, fit.model.rel_error)
    write_result(out, Result(coords={**stim_coords, **_checkpoint_coords(series)}, attrs={"analysis": "tca-across"}),
                 groups)
    summary = _across_summary("tca-across", spec, series, sites, started)
    write_json(layout.summary_path(out), {**summary, "modes": ["unit", "stimulus", "checkpoint"]})


def _samples(group: zarr.Group, site: str, index: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A site's observed (stimulus, position) samples in one checkpoint's store: (samples, unit); NaN or inf refused."""
    X = read(group, site, index)
    samples = X.reshape(-1, X.shape[-1])[rows]
    if not np.isfinite(samples).all():
        raise ValueError(f"checkpoint {group.attrs.get('checkpoint_name')} has NaN or inf activations at this site "
                         "(see its activation statistics)")
    return samples


def run_connectome(spec: dict, stores: list[Path], out: Path) -> None:
    """Dynamic functional connectome of a run: unit x unit affinity per checkpoint, non-negative CP communities.

    Per selected site, the ``max_units`` units of highest variance (each checkpoint's, summed over checkpoints)
    are kept; their affinity is computed over all observed (stimulus, position) samples of each
    checkpoint and the (unit x unit x checkpoint) tensor is split into ``rank`` communities.
    """
    started = time.perf_counter()
    series = _series(stores)
    index = _factor_stimuli(series[0], spec["max_stimuli"])
    rows = read(series[0], "mask", index).astype(bool).ravel()
    xp = get_namespace(spec["device"])
    groups, sites = {}, {}
    for site in _matching_sites(series[0], spec["sites"]) if len(series) > 1 else []:  # a course needs 2 checkpoints
        t0 = time.perf_counter()
        try:
            # two passes over the checkpoints: memory holds every unit of one checkpoint at a time
            units = top_units(sum(_samples(d, site, index, rows).var(axis=0) for d in series), spec["max_units"])
            A = xp.stack([affinity(to_device(_samples(d, site, index, rows)[:, units], xp, spec["dtype"]),
                                   spec["affinity"]) for d in series], axis=-1)  # (unit, unit, checkpoint)
            with warnings_named(f"connectome of site {site}"):
                found = communities(A, spec["rank"], replicates=spec["replicates"], n_iter_max=spec["n_iter_max"],
                                    tol=spec["tol"], random_state=spec["seed"])
        except ValueError as err:
            log.warning("connectome of site %s failed: %s", site, err)
            sites[site] = {"status": "failed", "error": str(err)}
            continue
        groups[site] = Result(
            {"affinity": (("unit", "unit_b", "checkpoint"), to_numpy(A)),
             "unit_factor": (("unit", "component"), found.unit_factor),
             "checkpoint_factor": (("checkpoint", "component"), found.time_factor),
             "weight": (("component",), found.weights), "size": (("component",), found.sizes),
             "loading": (("unit", "component"), found.loading),
             "community": (("unit",), found.assignment),
             "objective": (("replicate",), found.objectives), "similarity": (("replicate",), found.similarities)},
            {"unit": units, "unit_b": units, "component": np.arange(found.weights.size), **_checkpoint_coords(series)},
            {"rel_error": found.rel_error},
        )
        sizes = np.bincount(found.assignment[found.assignment >= 0], minlength=found.weights.size)
        sites[site] = {"status": "ok", "n_units": int(units.size), "n_samples": int(rows.sum()),
                       "rank": int(found.weights.size), "rel_error": found.rel_error,
                       "community_sizes": sizes.tolist(),
                       "similarity": replicate_similarity(found.similarities, found.objectives),
                       "runtime_seconds": round(time.perf_counter() - t0, 3)}
        log.info("connectome %s: %d units, community sizes %s", site, units.size, sizes.tolist())
    write_result(out, Result(coords=_checkpoint_coords(series), attrs={"analysis": "connectome"}), groups)
    write_json(layout.summary_path(out), _across_summary("connectome", spec, series, sites, started))
