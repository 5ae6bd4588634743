"""Jobs of representational similarity: per checkpoint, across checkpoints, across models."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zarr

from pipeline import layout
from pipeline.analyses import similarity as sim
from pipeline.backend import get_namespace, to_device, to_numpy
from pipeline.errors import StimulusError, StoreError
from pipeline.jobs import (
    analysed_stimuli,
    forward_order,
    provenance_order,
    read_json,
    scalar_params,
    store_provenance,
    write_json,
)
from pipeline.results import Result, ResultGroup, dims, read, write_result
from pipeline.store import open_group


def run_similarity(spec: dict, store: Path, out: Path) -> None:
    """Representational similarity of the sites of one store: result store ``out`` and summary JSON beside it.

    Each site is reduced to one pattern per stimulus by ``pooling`` its real (unpadded) positions,
    on at most ``max_stimuli`` stimuli of the test split where the set has one, drawn with ``seed``
    (the same draw for every store of a stimulus set, so checkpoints and models are compared on the
    same stimuli). Writes the
    layer x layer matrices ``cka``, ``rsa`` (``compare_method`` of the ``rdm_metric`` RDMs) and
    ``shape`` (angular shape distance), each site's ``rdm`` and pooled ``representation:<site>``,
    and each RDM's similarity to the reference RDMs (label; input where the stimuli have one) with
    a permutation p-value and a bootstrap interval.

    Raises ``StimulusError`` when the stimulus set has too few stimuli for the analysis.
    """
    started = time.perf_counter()
    xp = get_namespace(spec["device"])
    group = open_group(store)
    attrs = group.attrs.asdict()
    ids = read(group, "stimulus")
    candidates, drawn_from = analysed_stimuli(group)
    check_enough_stimuli(spec, attrs.get("stimulus_set"), attrs.get("stimulus_kind"), len(candidates), drawn_from)
    keep = candidates[stimulus_subset(len(candidates), spec["max_stimuli"], spec["seed"])]
    how = pooling(spec, attrs)
    mask = to_device(read(group, "mask", keep).astype(bool), xp)
    sites, reps, rdms = {}, {}, {}
    for site in attrs["sites"]:
        values = read(group, site, keep)
        try:
            pooled = sim.pool_positions(to_device(values, xp), mask, how)
            rep = to_numpy(pooled)
        except ValueError as err:
            sites[site] = {"status": "failed", "error": str(err)}
            continue
        if not np.all(np.isfinite(rep)):
            sites[site] = {"status": "failed", "error": "the pooled activations hold NaN or infinite values"}
            continue
        if not sim.varies_across_stimuli(rep):
            sites[site] = {"status": "failed", "error": _constant_site_error(group, keep)}
            continue
        reps[site] = rep
        sites[site] = {"status": "ok", "n_units": int(rep.shape[1])}
        try:
            rdms[site] = to_numpy(sim.rdm(pooled, spec["rdm_metric"]))
        except ValueError as err:  # e.g. a stimulus with all units silent has no correlation distance
            sites[site]["rdm_error"] = str(err)
    names = list(reps)
    matrices = _layer_matrices(spec, xp, [reps[s] for s in names], [rdms.get(s) for s in names])
    refs, ref_status = _reference_rdms(spec, xp, group, keep)
    tests = {site: {ref: _reference_test(spec, xp, rdms[site], R, REFERENCE_METHOD.get(ref, spec["compare_method"]))
                    for ref, R in refs.items()} for site in rdms}

    n = len(keep)
    kept_ids = ids[keep]
    data = {name: (("site_a", "site_b"), M) for name, M in matrices.items()}
    rdm_stack = np.stack([rdms.get(s, np.full((n, n), np.nan)) for s in names]) if names else np.zeros((0, n, n))
    data["rdm"] = (("site", "stimulus", "stimulus_b"), rdm_stack.astype(np.float32))
    for field in ("statistic", "pvalue", "ci_low", "ci_high") if refs else ():
        data[f"reference_{field}"] = (("site", "reference"), np.array(
            [[tests.get(s, {}).get(r, {}).get(field, np.nan) for r in refs] for s in names], dtype=float
        ).reshape(len(names), len(refs)))
    for site in names:
        data[representation_name(site)] = (("stimulus", dims(group, site)[2]), reps[site])
    site_names = np.array(names, dtype=str)
    coords = {"site": site_names, "site_a": site_names, "site_b": site_names, "stimulus": kept_ids,
              "stimulus_b": kept_ids}
    if refs:
        coords["reference"] = np.array(list(refs), dtype=str)
    if "label" in group:
        coords["label"] = ("stimulus", read(group, "label", keep))
    write_result(out, Result(data, coords, {"analysis": "similarity", "store": str(store), **scalar_params(spec)}))
    write_json(layout.summary_path(out), {
        "analysis": "similarity",
        "params": spec,
        "provenance": store_provenance(attrs),
        "pool": how,
        "representation": POOL_TEXT[how] if mask.shape[1] > 1 else ONE_POSITION_TEXT,
        "n_stimuli": n,
        "n_stimuli_total": len(ids),
        "stimuli_from": drawn_from,
        "sites": sites,
        "references": ref_status,
        "tests": tests,
        "runtime_seconds": round(time.perf_counter() - started, 3),
    })


POOL_TEXT = {
    "mean": "the mean over its real (unpadded) positions (the tokens of a sentence, special tokens such as [CLS] and "
            "[SEP] included; a trial's time-averaged state)",
    "last": "its last real position (the state a recurrent network ends a trial in)",
}


ONE_POSITION_TEXT = "the site's output (each stimulus has one position, so nothing is pooled)"


def pooling(spec: dict, attrs: dict) -> str:
    """How the positions of a store's stimuli are pooled: the spec's ``pool``; ``auto`` is ``last`` for flip-flop
    trials (whose label is the bits held at the end) and ``mean`` otherwise."""
    if spec["pool"] != "auto":
        return spec["pool"]
    return "last" if attrs.get("stimulus_kind") == "flipflop" else "mean"


def representation_name(site: str) -> str:
    """Variable of a similarity result store holding a site's pooled patterns (stimulus, unit)."""
    return f"representation:{site}"


GROWS = {"sentences": "add sentences to its file (or raise its limit)", "arrays": "add stimuli to its file",
         "digits": "raise its test_fraction", "flipflop": "raise its n_trials"}


def check_enough_stimuli(spec: dict, stimulus_set: str, kind: str | None, n: int, drawn_from: str) -> None:
    """Refuse a stimulus set (of ``kind``) of fewer stimuli (in ``drawn_from``) than the analysis needs, naming the
    fix; also checked at the workflow's start for the stimulus files it reads there."""
    needed, why = (3, "fewer give RDMs of one entry or none")
    if spec["cka_debiased"]:
        needed, why = 4, "the debiased CKA needs 4"
    if n < needed:
        where = "" if drawn_from == "all stimuli" else f" in {drawn_from}"
        grow = GROWS.get(kind, "give it more stimuli")
        raise StimulusError(f"stimulus set {stimulus_set!r} has {n} stimuli{where}; similarity needs at least "
                            f"{needed} ({why}): {grow}, or leave it out of the models' stimuli")


def _constant_site_error(group: zarr.Group, keep: np.ndarray) -> str:
    """Why a site's pooled activations can be the same for every kept stimulus, judged by the inputs the store
    recorded (token ids of texts, numeric inputs or input ids otherwise)."""
    error = "the pooled activations are the same for every stimulus"
    mask = read(group, "mask", keep).astype(bool)
    if "token_id" in group:
        tokens = np.where(mask, read(group, "token_id", keep), -1)
        if np.all(tokens == tokens[:1]):
            return (f"{error}, because every stimulus was recorded as the same {int(mask[0].sum())} tokens: the texts "
                    "are identical up to there (if they differ later, raise the stimulus set's max_length)")
    elif "input" in group or "input_id" in group:
        inputs = read(group, "input" if "input" in group else "input_id", keep)
        if np.all(inputs == inputs[:1]):
            return f"{error}, because every stimulus has the same input"
    else:
        return f"{error}: the stimuli are identical as recorded, or this site does not respond to what tells them apart"
    return f"{error} although their inputs differ: this site does not respond to what tells them apart"


def stimulus_subset(n: int, max_stimuli: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_stimuli`` of ``n`` stimuli, the same for equal (n, max_stimuli, seed)."""
    if n <= max_stimuli:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_stimuli, replace=False))


def _layer_matrices(spec: dict, xp, reps: list[np.ndarray], rdms: list[np.ndarray | None]) -> dict[str, np.ndarray]:
    """CKA, RSA and shape-distance matrices (r, r) of r representations, and for the biased CKA its chance level
    ``cka_chance``; RSA is NaN where an RDM is missing."""
    r = len(reps)
    names = ("cka", "rsa", "shape") if spec["cka_debiased"] else ("cka", "cka_chance", "rsa", "shape")
    if r == 0:
        return {name: np.zeros((0, 0)) for name in names}
    on_device = [to_device(R, xp) for R in reps]
    cka = to_numpy(sim.cka_matrix(on_device, debiased=spec["cka_debiased"]))
    chance = {} if spec["cka_debiased"] else {"cka_chance": to_numpy(sim.cka_chance(on_device))}
    shape = to_numpy(sim.shape_distance_matrix(on_device, alpha=spec["shape_alpha"]))
    rsa = np.full((r, r), np.nan)
    have = [i for i, D in enumerate(rdms) if D is not None]
    if have:
        stack = to_device(np.stack([rdms[i] for i in have]), xp)
        rsa[np.ix_(have, have)] = to_numpy(sim.compare_rdms(stack, stack, spec["compare_method"]))
    return {"cka": cka, **chance, "rsa": rsa, "shape": shape}


def _reference_rdms(spec: dict, xp, group: zarr.Group, keep: np.ndarray) -> tuple[dict, dict]:
    """Reference RDMs on the kept stimuli: ``label`` (same label 0, else 1) and ``input`` (the stimuli's inputs).

    Inputs come from the store's ``input`` coordinate (digit pixels, flip-flop pulses, a user's numeric
    arrays); texts and integer ids have none. Returns (name -> RDM, name -> status).
    """
    refs, status = {}, {}
    if "label" in group:
        codes = np.unique(read(group, "label", keep), return_inverse=True)[1]
        n_labels = int(codes.max()) + 1
        if 1 < n_labels < codes.size:
            refs["label"] = to_numpy(sim.label_rdm(to_device(codes, xp)))
            status["label"] = {"status": "ok"}
        else:
            which = "the same label" if n_labels == 1 else "a label of its own"
            status["label"] = {"status": "unavailable", "reason": f"every kept stimulus has {which}, so all entries "
                               "of the label RDM are equal and no RDM can be compared with it"}
    else:
        status["label"] = {"status": "unavailable", "reason": "the store has no label coordinate"}
    if "input" not in group:
        what = "integer ids" if "input_id" in group else "texts"
        status["input"] = {"status": "unavailable", "reason": f"the stimuli are {what}, not numeric inputs"}
        return refs, status
    inputs = read(group, "input", keep).astype(np.float64)
    try:
        refs["input"] = to_numpy(sim.input_rdm(to_device(inputs, xp), spec["rdm_metric"]))
        status["input"] = {"status": "ok", "shape": list(inputs.shape[1:])}
    except ValueError as err:
        status["input"] = {"status": "unavailable", "reason": str(err)}
    return refs, status


# The label RDM is all ties (0 or 1); Kendall tau-a is the rank correlation that does not favour
# RDMs with tied entries (Nili et al. 2014). Other references use the configured compare_method.
REFERENCE_METHOD = {"label": "kendall_tau_a"}


def _reference_test(spec: dict, xp, D: np.ndarray, R: np.ndarray, method: str) -> dict:
    """Similarity (by ``method``) of a site's RDM to a reference RDM, its permutation p-value and bootstrap interval
    (NaN where fewer than half the resamples are defined, see ``sim.bootstrap_ci``) with the resamples it uses."""
    seed = spec["seed"]
    A, B = to_device(D, xp), to_device(R, xp)
    try:
        test = sim.permutation_test(A, B, method, n_permutations=spec["n_permutations"], seed=seed)
        interval = sim.bootstrap_ci(A, B, method, n_bootstrap=spec["n_bootstrap"], seed=seed)
    except ValueError as err:
        return {"method": method, "error": str(err)}
    result = {"method": method, "statistic": test.statistic, "pvalue": test.pvalue, "ci_low": interval.low,
              "ci_high": interval.high, "n_bootstrap_used": interval.n_used}
    if method == "kendall_tau_a":  # tau-a against an RDM with ties cannot reach 1
        result["ceiling"] = sim.kendall_tau_a_ceiling(B)
    return result


def _similarity_inputs(results: list[Path]) -> list[tuple[dict, ResultGroup]]:
    """(summary, result store) of per-checkpoint similarity results; all must hold the same stimuli."""
    entries = []
    for path in results:
        summary = read_json(layout.summary_path(Path(path)))
        entries.append((summary, ResultGroup(path)))
    if entries:
        first = entries[0][1]["stimulus"]
        for summary, group in entries[1:]:
            if not np.array_equal(group["stimulus"], first):
                prov = summary["provenance"]
                raise StoreError(
                    f"similarity result of {prov.get('model_id')}/{prov.get('run')}/{prov.get('checkpoint_name')} "
                    "holds other stimuli than the rest; re-run 'similarity' so all use the same max_stimuli and seed"
                )
    return entries


def _compare_representations(spec: dict, xp, entries: list[tuple[dict, ResultGroup]], site: str) -> dict | None:
    """CKA, RSA and shape matrices of one site between entries where it is ok; None with fewer than 2."""
    have = [k for k, (summary, _) in enumerate(entries) if summary["sites"].get(site, {}).get("status") == "ok"]
    if len(have) < 2:
        return None
    reps = [entries[k][1][representation_name(site)] for k in have]
    rdms = []
    for k in have:
        group = entries[k][1]
        D = np.asarray(group["rdm"][list(group["site"]).index(site)], dtype=np.float64)
        rdms.append(D if np.all(np.isfinite(D)) else None)
    matrices = _layer_matrices(spec, xp, reps, rdms)
    return {"members": have, **matrices}  # written by write_json: NaN entries become null


def run_similarity_across(spec: dict, results: list[Path], out: Path) -> None:
    """Checkpoint x checkpoint CKA, RSA and shape-distance matrices of each site of a run (drift over training).

    ``results`` are the per-checkpoint result stores of ``run_similarity``; checkpoints are ordered
    by training step. Writes one JSON file.
    """
    xp = get_namespace(spec["device"])
    entries = _similarity_inputs(results)
    entries.sort(key=lambda e: provenance_order(e[0]["provenance"]))
    provenance = [summary["provenance"] for summary, _ in entries]
    series = {}
    for site in dict.fromkeys(s for summary, _ in entries for s in summary["sites"]):
        compared = _compare_representations(spec, xp, entries, site)
        if compared is not None:
            members = compared.pop("members")
            series[site] = {"checkpoints": [provenance[k].get("checkpoint_name") for k in members],
                            "steps": [provenance[k].get("step") for k in members], **compared}
    first = provenance[0] if provenance else {}
    write_json(out, {
        "analysis": "similarity",
        "params": spec,
        "model": first.get("model_id"),
        "run": first.get("run"),
        "stimulus_set": first.get("stimulus_set"),
        "checkpoints": [p.get("checkpoint_name") for p in provenance],
        "steps": [p.get("step") for p in provenance],
        "sites": series,
        "site_order": forward_order(provenance),
    })


def run_similarity_models(spec: dict, results: list[Path], out: Path) -> None:
    """Compare the final checkpoints of every (model, run) recorded on one stimulus set.

    ``results`` are per-checkpoint result stores of ``run_similarity``. Writes, per site name,
    entry x entry CKA, RSA and shape-distance matrices (summary JSON), and the angular shape
    distances between all (entry, site) representations with their 2-D classical MDS map
    (result store ``out``: ``shape_distance`` (point, point_b), ``mds`` (point, component)).
    """
    started = time.perf_counter()
    xp = get_namespace(spec["device"])
    entries = _similarity_inputs(results)
    entries.sort(key=lambda e: (str(e[0]["provenance"].get("model_id")), str(e[0]["provenance"].get("run"))))
    provenance = [summary["provenance"] for summary, _ in entries]
    labels = [f"{p.get('model_id')}/{p.get('run')}" for p in provenance]
    comparisons = {}
    points = []
    for site in dict.fromkeys(s for summary, _ in entries for s in summary["sites"]):
        compared = _compare_representations(spec, xp, entries, site)
        if compared is not None:
            comparisons[site] = {"entries": [labels[k] for k in compared.pop("members")], **compared}
        points += [(k, site) for k, (summary, _) in enumerate(entries)
                   if summary["sites"].get(site, {}).get("status") == "ok"]
    n_components = min(2, len(points))
    if points:
        reps = [to_device(entries[k][1][representation_name(site)], xp) for k, site in points]
        D = sim.shape_distance_matrix(reps, alpha=spec["shape_alpha"])
        coords, eigenvalues = (to_numpy(a) for a in sim.classical_mds(D, n_components))
        D = to_numpy(D)
    else:
        D, coords, eigenvalues = np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0)
    positive = eigenvalues[eigenvalues > 0]
    stimulus_set = provenance[0].get("stimulus_set") if provenance else None
    first = entries[0][0] if entries else {}  # every entry holds the same stimuli (checked above)
    stimuli = {key: first.get(key) for key in ("n_stimuli", "n_stimuli_total", "stimuli_from", "representation")}
    point_names = np.array([f"{labels[k]}:{site}" for k, site in points], dtype=str)
    write_result(out, Result(
        {"shape_distance": (("point", "point_b"), D), "mds": (("point", "component"), coords)},
        {"point": point_names, "point_b": point_names,
         "point_entry": ("point", np.array([labels[k] for k, _ in points], dtype=str)),
         "point_site": ("point", np.array([site for _, site in points], dtype=str)),
         "component": np.arange(n_components)},
        {"analysis": "similarity", "scope": "experiment", "stimulus_set": str(stimulus_set), **scalar_params(spec)},
    ))
    write_json(layout.summary_path(out), {
        "analysis": "similarity",
        "scope": "experiment",
        "stimulus_set": stimulus_set,
        "params": spec,
        "provenance": {"entries": provenance},
        "entries": [{"label": label, "checkpoint": p.get("checkpoint_name"), "step": p.get("step")}
                    for label, p in zip(labels, provenance)],
        **stimuli,
        "comparisons": comparisons,
        "mds": {"n_points": len(points), "metric": "angular shape distance",
                "explained": float(positive[:n_components].sum() / positive.sum()) if positive.size else None,
                "eigenvalues": eigenvalues[:10].tolist()},
        "runtime_seconds": round(time.perf_counter() - started, 3),
    })
