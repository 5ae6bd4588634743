# Record activations of one (model, run, checkpoint, stimulus set) into a Zarr store.


def extract_inputs(wildcards):
    """The files a store is made from, so that a change to any of them re-records it: the checkpoint,
    a user's sentence file, and the files of a local Hugging Face model folder."""
    files = {}
    path = model_checkpoints(wildcards.model, wildcards.run)[wildcards.checkpoint]
    if path is not None:
        files["checkpoint"] = path
    stimuli = config["stimuli"][wildcards.stimuli]
    if stimuli.get("path", "builtin") != "builtin":
        files["stimuli"] = stimuli["path"]
    entry = config["models"][wildcards.model]
    if entry["source"] == "huggingface" and Path(entry["path"]).is_dir():
        files["model"] = sorted(
            str(f) for f in Path(entry["path"]).iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix != ".md"  # not .gitattributes, README.md
        )
    return files


def file_stamps(files):
    """Size and modification time (ns) of each file of ``extract_inputs``. As a parameter, it re-records a
    store whose checkpoint or sentence file was replaced by one with an older time (cp -p, rsync -a, tar),
    which Snakemake's comparison of times alone misses."""
    paths = [p for value in files.values() for p in ([value] if isinstance(value, str) else value)]
    stamps = []
    for path in sorted(paths):
        stat = Path(path).stat() if Path(path).exists() else None
        stamps.append(f"{path} {stat.st_size} {stat.st_mtime_ns}" if stat else f"{path} absent")
    return "; ".join(stamps)


rule extract:
    input:
        unpack(extract_inputs),
    output:
        directory(layout.activation_store(OUT, "{model}", "{run}", "{checkpoint}", "{stimuli}")),
    params:
        spec=lambda wc: spec_arg(jobs.extract_spec(config, wc.model, wc.run, wc.stimuli)),
        checkpoint=lambda wc, input: f"--checkpoint {shlex.quote(input.checkpoint)}" if "checkpoint" in input.keys() else "",
        file_stamps=lambda wc: file_stamps(extract_inputs(wc)),  # of wildcards: Snakemake ignores params of input
    log:
        layout.log_file(OUT, "extract", "{model}", "{run}", "{checkpoint}", "{stimuli}"),
    benchmark:
        layout.benchmark_file(OUT, "extract", "{model}", "{run}", "{checkpoint}", "{stimuli}")
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=GPU,
    threads: 1
    shell:
        "{PIPELINE} --log {log:q} --threads {threads} extract --spec {params.spec} --out {output:q} {params.checkpoint}"
